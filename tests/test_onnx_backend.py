"""The ONNX Runtime GenAI backend: fp32 output identical to the hf backend, adapters, limits, the cache.

The tiny models of ``tiny_models.py`` have a head size of 8, which onnxruntime's GroupQueryAttention
refuses (it needs a multiple of 16); this module builds a small-but-valid Llama (hidden 64, 4 heads
of 16, 2 KV heads, 2 blocks) with the same tiny tokenizer instead. Its ONNX build takes about a
second. Both engines share one adapter store, whose adapters are made on the hf backend.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.cli import cli
from adaptrix_core.errors import (
    AdapterIncompatibleError,
    BackendCapabilityError,
    ConfigError,
    ContextOverflowError,
    DeviceNotAvailableError,
    ModelLoadError,
)
from adaptrix_core.plugins import get_plugin_manager
from adaptrix_core.registry import collect

GREEDY = {"temperature": 0, "max_new_tokens": 24}
PROMPTS = ["Hello, how are you today?", "What is the capital of France?", "Write a Python function that adds two numbers."]


def ensure_onnx_plugin() -> None:
    """Register the built-in onnx plugin when the installed entry points do not list it yet."""
    import adaptrix_plugins.backends.onnx as onnx_plugin

    manager = get_plugin_manager()
    if "onnx" not in collect(manager).backends and manager.get_plugin("backend_onnx") is None:
        manager.register(onnx_plugin, name="backend_onnx")


def build_llama64(folder: Path) -> Path:
    """A 2-block Llama with head size 16 (the smallest GQA accepts) and the tiny models' tokenizer."""
    import tiny_models
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_models.build_tokenizer("llama")
    config = LlamaConfig(**{**tiny_models._decoder(tokenizer), "hidden_size": 64, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "intermediate_size": 128})
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_torch_thread):
    """Model folder, store, cache and the hf engine holding two saved adapters with non-zero B."""
    ensure_onnx_plugin()
    root = tmp_path_factory.mktemp("onnx")
    model = build_llama64(root / "llama64")
    store, cache = root / "adapters", root / "cache"
    hf = ModularAdaptrixEngine(str(model), device="cpu", adapters_dir=str(store), config={"cache_dir": str(cache)})
    hf.initialize()
    for seed, (name, keyword) in enumerate((("alpha", "capital"), ("beta", "python"))):
        hf.create_adapter(name, layers="all", rank=4, alpha=8)
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for parameter in hf.backend.lora.parameters(name):
                parameter.normal_(0, 0.5)
        hf.save_adapter(name, description=f"{name} test adapter", routing={"keywords": [keyword]})
    yield {"model": model, "store": store, "cache": cache, "hf": hf}
    hf.cleanup()


def onnx_engine(setup, router: str | None = None, **onnx_settings) -> ModularAdaptrixEngine:
    config = {"cache_dir": str(setup["cache"]), "plugins": {"onnx": {"precision": "fp32", **onnx_settings}}}
    return ModularAdaptrixEngine(str(setup["model"]), device="cpu", backend="onnx", adapters_dir=str(setup["store"]),
                                 config=config, router=router)


@pytest.fixture(scope="module")
def pair(setup):
    """(onnx engine in fp32 with the keyword router, hf engine)."""
    engine = onnx_engine(setup, router="keyword").initialize()
    yield engine, setup["hf"]
    engine.cleanup()


# -- identical to hf in fp32 ---------------------------------------------------------------------

@pytest.mark.parametrize("adapter", [None, "alpha", "beta", {"alpha": 0.6, "beta": 0.4}])
def test_greedy_output_identical_to_hf(pair, adapter):
    onnx, hf = pair
    for prompt in PROMPTS:
        ours, theirs = onnx.query(prompt, adapter=adapter, **GREEDY), hf.query(prompt, adapter=adapter, **GREEDY)
        assert ours.text == theirs.text, prompt
        assert (ours.prompt_tokens, ours.completion_tokens, ours.finish_reason) == \
            (theirs.prompt_tokens, theirs.completion_tokens, theirs.finish_reason)
        assert ours.backend == "onnx" and ours.adapters == theirs.adapters


def test_adapters_change_the_output(pair):
    onnx, _ = pair
    base = [onnx.generate(p, adapter=None, **GREEDY) for p in PROMPTS]
    assert base != [onnx.generate(p, adapter="alpha", **GREEDY) for p in PROMPTS]
    assert base != [onnx.generate(p, adapter="beta", **GREEDY) for p in PROMPTS]


def test_batch_grouped_by_adapter_matches_hf(pair):
    onnx, hf = pair
    prompts = PROMPTS + PROMPTS[:2]
    adapters = [None, "alpha", "beta", "alpha", None]
    assert onnx.generate_batch(prompts, adapters=adapters, **GREEDY) == hf.generate_batch(prompts, adapters=adapters, **GREEDY)
    assert onnx.generate_batch(prompts, **GREEDY) == [onnx.generate(p, **GREEDY) for p in prompts]


def test_chat_stream_and_stop_strings(pair):
    onnx, hf = pair
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    assert onnx.chat(messages, **GREEDY) == hf.chat(messages, **GREEDY)
    full = onnx.generate(PROMPTS[1], adapter="alpha", **GREEDY)
    pieces = list(onnx.stream(PROMPTS[1], adapter="alpha", **GREEDY))
    assert len(pieces) > 1 and "".join(pieces) == full
    stop = full[len(full) // 2: len(full) // 2 + 2]
    stopped = onnx.generate(PROMPTS[1], adapter="alpha", stop=[stop], **GREEDY)
    assert stopped == hf.generate(PROMPTS[1], adapter="alpha", stop=[stop], **GREEDY) == full[: full.find(stop)]
    assert "".join(onnx.stream(PROMPTS[1], adapter="alpha", stop=[stop], **GREEDY)) == stopped


def test_ignore_eos_and_explicit_base_with_active_adapter(pair):
    onnx, hf = pair
    forced = onnx.query(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True)
    assert forced.completion_tokens == 30 and forced.finish_reason == "length"
    assert forced.text == hf.query(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True).text
    onnx.switch_adapter("beta")
    try:
        assert onnx.generate(PROMPTS[2], **GREEDY) == hf.generate(PROMPTS[2], adapter="beta", **GREEDY)
        assert onnx.generate(PROMPTS[2], adapter=None, **GREEDY) == hf.generate(PROMPTS[2], adapter=None, **GREEDY)
    finally:
        onnx.switch_adapter(None)


def test_auto_routing_picks_and_serves_the_adapter(pair):
    onnx, hf = pair
    result = onnx.query("What is the capital of Spain?", adapter="auto", **GREEDY)
    assert result.adapters == ["alpha"] and result.routing["router"] == "keyword"
    assert result.text == hf.generate("What is the capital of Spain?", adapter="alpha", **GREEDY)


def test_seeded_sampling_is_reproducible(pair):
    onnx, _ = pair
    sampled = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16}
    first = onnx.generate(PROMPTS[0], seed=7, **sampled)
    assert first == onnx.generate(PROMPTS[0], seed=7, **sampled)
    assert len({onnx.generate(PROMPTS[0], seed=seed, **sampled) for seed in (1, 2, 3, 2**40)}) > 1


def test_context_limit(pair):
    onnx, hf = pair
    long_prompt = "Hello " * 600
    with pytest.raises(ContextOverflowError):
        onnx.generate(long_prompt, **GREEDY)
    per_word = onnx.backend.count_tokens("Hello " * 10) / 10
    near = "Hello " * int((onnx.max_context - 30) / per_word)  # the template adds a few tokens: little room is left
    ours, theirs = onnx.query(near, **GREEDY), hf.query(near, **GREEDY)
    assert ours.prompt_tokens + ours.completion_tokens <= onnx.max_context and ours.prompt_tokens > onnx.max_context - 40
    assert (ours.text, ours.completion_tokens) == (theirs.text, theirs.completion_tokens)


def test_model_info_reports_backend_and_precision(pair):
    info = pair[0].get_model_info()
    assert info["backend"] == "onnx" and info["precision"] == "fp32" and info["dtype"] == "float32"
    assert info["device"] == "cpu" and info["layers_path"] is None
    assert info["lora_slots"] == "q_proj, v_proj in blocks 0-1"  # the family default plus the store's adapters
    assert Path(info["onnx_path"], "model.onnx").is_file()
    memory = pair[0].backend.memory_report()
    assert memory["weights"] > 0 and memory["adapters"] > 0
    assert pair[0].memory_report()["base_model_bytes"] == memory["weights"]


# -- what the backend refuses --------------------------------------------------------------------

def test_training_is_a_capability_error(pair, setup):
    onnx, _ = pair
    before = digest(setup["store"])
    with pytest.raises(BackendCapabilityError, match="'onnx'.*training") as caught:
        onnx.train_adapter("new", [{"prompt": "say hi", "response": "hi"}] * 8)
    assert caught.value.capability == "training" and caught.value.backend == "onnx"
    with pytest.raises(BackendCapabilityError, match="training"):
        onnx.create_adapter("fresh")
    assert digest(setup["store"]) == before


def test_adapter_outside_the_slots_is_refused(setup):
    with onnx_engine(setup, lora_modules=["q_proj", "v_proj"], lora_layers=[0]) as narrow:
        assert narrow.get_model_info()["lora_slots"] == "q_proj, v_proj in blocks 0"
        with pytest.raises(AdapterIncompatibleError, match="outside the LoRA slots") as caught:
            narrow.load_adapter("alpha")
        assert "adaptrix export onnx" in str(caught.value) and "plugins.onnx.lora_layers" in str(caught.value)
        assert narrow.loaded_adapters() == []
        assert narrow.generate(PROMPTS[0], **GREEDY) == setup["hf"].generate(PROMPTS[0], adapter=None, **GREEDY)


def test_bad_settings_and_devices_are_typed_errors(setup):
    with pytest.raises(ConfigError, match="plugins.onnx.precision"):
        onnx_engine(setup, precision="int3").initialize()
    with pytest.raises(ConfigError, match="lora_modules"):
        onnx_engine(setup, lora_modules=["nope_proj"]).initialize()
    config = {"cache_dir": str(setup["cache"]), "model": {"device": "cuda"}}
    with pytest.raises(DeviceNotAvailableError, match="CPU"):
        ModularAdaptrixEngine(str(setup["model"]), backend="onnx", config=config).initialize()


def test_unreadable_or_pickled_weights_are_typed_errors(setup, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(setup["model"], broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="Could not read the weights"):
        ModularAdaptrixEngine(str(broken), device="cpu", backend="onnx", config={"cache_dir": str(tmp_path / "c")}).initialize()
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only from safetensors"):
        ModularAdaptrixEngine(str(broken), device="cpu", backend="onnx", config={"cache_dir": str(tmp_path / "c")}).initialize()
    assert not (tmp_path / "c" / "onnx").exists()


def test_unbuildable_model_leaves_nothing_in_the_cache(tiny_model_dir, tmp_path):
    ensure_onnx_plugin()
    engine = ModularAdaptrixEngine(str(tiny_model_dir("gpt2")), device="cpu", backend="onnx",
                                   adapters_dir=str(tmp_path / "store"), config={"cache_dir": str(tmp_path / "cache")})
    with pytest.raises(ModelLoadError, match="ONNX"):
        engine.initialize()
    assert [p for p in (tmp_path / "cache" / "onnx").iterdir()] == []


# -- the cache -----------------------------------------------------------------------------------

def test_second_engine_reuses_the_build_and_the_converted_adapters(pair, setup):
    onnx, _ = pair
    onnx.load_adapter("alpha")
    converted = {p.name: p.stat().st_mtime_ns for p in (setup["cache"] / "onnx" / "adapters").iterdir()}
    store_before = digest(setup["store"])
    with onnx_engine(setup) as second:
        info = second.get_model_info()
        assert info["onnx_build"] == "cached" and info["onnx_path"] == onnx.get_model_info()["onnx_path"]
        assert second.generate(PROMPTS[1], adapter="alpha", **GREEDY) == onnx.generate(PROMPTS[1], adapter="alpha", **GREEDY)
    after = {p.name: p.stat().st_mtime_ns for p in (setup["cache"] / "onnx" / "adapters").iterdir()}
    assert {k: after[k] for k in converted} == converted  # nothing converted again
    assert digest(setup["store"]) == store_before  # nothing written into the adapter folders


def test_int4_serves_adapters_from_an_int8_graph(setup, pair):
    with onnx_engine(setup, precision="int4") as quantized:
        info = quantized.get_model_info()
        assert (info["precision"], info["adapter_precision"], info["dtype"]) == ("int4", "int8", "int4")
        assert len({info["onnx_path"], info["onnx_adapter_path"], pair[0].get_model_info()["onnx_path"]}) == 3
        assert quantized.query(PROMPTS[0], adapter="alpha", **GREEDY).completion_tokens > 0
        assert quantized.generate_batch(PROMPTS, adapters=[None, "alpha", None], **GREEDY)[1] == \
            quantized.generate(PROMPTS[1], adapter="alpha", **GREEDY)
        assert quantized.backend.memory_report()["adapters"] > 0
    with onnx_engine(setup, precision="int4", adapter_precision="int4") as single:
        info = single.get_model_info()
        assert info["adapter_precision"] == "int4" and info["onnx_path"] == info["onnx_adapter_path"]
        assert single.query(PROMPTS[0], adapter="alpha", **GREEDY).completion_tokens > 0


# -- the command line ----------------------------------------------------------------------------

def test_cli_backend_onnx_and_export(setup, pair, tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps({"cache_dir": str(setup["cache"]), "plugins": {"onnx": {"precision": "fp32"}}}))
    common = ["--model", str(setup["model"]), "--config", str(config_file), "--adapters-dir", str(setup["store"])]
    result = CliRunner().invoke(cli, ["query", PROMPTS[1], "--backend", "onnx", "--temperature", "0",
                                      "--max-new-tokens", "24", "--adapter", "alpha", "--json", *common])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["backend"] == "onnx" and answer["text"] == setup["hf"].generate(PROMPTS[1], adapter="alpha", **GREEDY)
    result = CliRunner().invoke(cli, ["info", "--backend", "onnx", "--json", *common])
    assert result.exit_code == 0 and json.loads(result.stdout)["precision"] == "fp32"
    result = CliRunner().invoke(cli, ["export", "onnx", "--precision", "fp32", "--json", *common])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["onnx_build"] == "cached" and exported["path"] == pair[0].get_model_info()["onnx_path"]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "response": "hi"}) + "\n" for i in range(8)))
    result = CliRunner().invoke(cli, ["train", "--name", "x", "--data", str(data), "--backend", "onnx", "--json", *common])
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["type"] == "BackendCapabilityError"
    assert "training" in result.stderr


# -- the real default model ----------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_fp32_identical_to_hf(default_engine):
    """fp32 ONNX answers equal the hf backend's, base and with the demo adapter ``dates``."""
    ensure_onnx_plugin()
    prompts = ["What is the capital of France?", "Name three colors.",
               "Convert this date to ISO format (YYYY-MM-DD): January 17th, 2043",
               "Convert this date to ISO format (YYYY-MM-DD): November 19, 2049"]
    with ModularAdaptrixEngine(backend="onnx", config={"plugins": {"onnx": {"precision": "fp32"}}}) as onnx:
        assert onnx.get_model_info()["lora_slots"] == "q_proj, v_proj in blocks 10-19"
        for adapter in (None, "dates"):
            ours = onnx.generate_batch(prompts, adapter=adapter, temperature=0, max_new_tokens=32)
            assert ours == [default_engine.generate(p, adapter=adapter, temperature=0, max_new_tokens=32) for p in prompts]
        assert onnx.generate(prompts[2], adapter="dates", temperature=0, max_new_tokens=16) == "2043-01-17"
        story = {"temperature": 0, "max_new_tokens": 48}
        assert "".join(onnx.stream("Write a short story about a robot.", **story)) == \
            default_engine.generate("Write a short story about a robot.", **story)
