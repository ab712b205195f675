"""LoRA adapters on tiny models: injection into chosen layers, the store, serving, composition, training."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from tiny_models import KINDS

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.errors import (
    AdapterCorruptError,
    AdapterError,
    AdapterExistsError,
    AdapterIncompatibleError,
    AdapterIntegrityError,
    AdapterNotFoundError,
    InvalidGenerationParameterError,
    TrainingDataError,
)
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.models.layers import resolve_layers

GREEDY = {"temperature": 0, "max_new_tokens": 6}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma".split()


def answer_data(answer: str, count: int = 24) -> list[dict[str, str]]:
    """A task a 2-layer random model learns in a few steps: answer every 'say <word>' with one word."""
    return [{"prompt": f"say {WORDS[i % len(WORDS)]}", "response": answer} for i in range(count)]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def train_quick(engine: ModularAdaptrixEngine, name: str, data=None, **options):
    settings = {"epochs": 6, "learning_rate": 2e-2, "layers": "all", "batch_size": 8, "eval_split": 0.0}
    settings.update(options)
    return engine.train_adapter(name, data or answer_data(name), **settings)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "adapters"


@pytest.fixture
def llama(tiny_model_dir, store, single_torch_thread):
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store)) as engine:
        yield engine


@pytest.fixture
def trained(llama):
    """The tiny llama engine with two trained, saved adapters: 'yes' and 'no' (each answers its name)."""
    train_quick(llama, "yes")
    train_quick(llama, "no", seed=1)
    return llama


# -- injection ----------------------------------------------------------------------------------

def test_layer_presets():
    family = ModelFamily(name="x")
    assert resolve_layers("quartiles", family, 24) == [6, 12, 18]
    assert resolve_layers("quartiles", family, 30) == [7, 15, 22]
    assert resolve_layers("middle", family, 30) == list(range(10, 20))
    assert resolve_layers("all", family, 4) == [0, 1, 2, 3]
    assert resolve_layers([3, 1, 1], family, 4) == [1, 3]
    for bad in ("top", [], [4], [-1], ["1"], 2.5):
        with pytest.raises(AdapterError):
            resolve_layers(bad, family, 4)


EXPECTED_TARGETS = {"phi3": {"qkv_proj"}, "phi": {"q_proj", "v_proj"}, "gpt2": {"c_attn"}, "stablelm": {"q_proj", "v_proj"}}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers, expected", [("middle", [0]), ([1], [1]), ("all", [0, 1])])
def test_only_the_chosen_layers_carry_lora(kind, layers, expected, tiny_model_dir, tmp_path, single_torch_thread):
    with ModularAdaptrixEngine(str(tiny_model_dir(kind)), device="cpu", adapters_dir=str(tmp_path)) as engine:
        meta = engine.create_adapter("probe", layers=layers, rank=4)
        assert meta.target_layers == expected
        layers_path = engine.get_model_info()["layers_path"]
        pattern = re.compile(rf"{re.escape(layers_path)}\.(\d+)\.(.+)\.lora_A$")
        found = [pattern.search(name) for name, _ in engine.backend.model.named_modules() if name.endswith("lora_A")]
        assert found and all(found)
        assert sorted({int(m.group(1)) for m in found}) == expected
        leaves = {m.group(2).rsplit(".", 1)[-1] for m in found}
        assert leaves == EXPECTED_TARGETS.get(kind, {"q_proj", "v_proj"})
        assert leaves == set(meta.target_modules)
        # A fresh adapter starts as a no-op: LoRA B is zero.
        assert engine.generate("hello", adapter="probe", **GREEDY) == engine.generate("hello", adapter=None, **GREEDY)


def test_family_aware_target_errors(llama):
    with pytest.raises(AdapterError, match="not projections of the llama family"):
        llama.create_adapter("x", target_modules=["qkv_proj"])
    with pytest.raises(AdapterError, match="Unknown layer preset"):
        llama.create_adapter("x", layers="outer")
    with pytest.raises(AdapterError, match="out of range"):
        llama.create_adapter("x", layers=[2])
    with pytest.raises(AdapterError, match="Invalid adapter name"):
        llama.create_adapter("../escape")
    meta = llama.create_adapter("mlp-only", target_modules=["gate_proj", "down_proj"], layers="all")
    assert meta.target_modules == ["gate_proj", "down_proj"]


# -- store ----------------------------------------------------------------------------------------

def test_saved_adapter_is_a_standard_peft_folder(trained, store, tiny_model_dir):
    folder = store / "yes"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "adaptrix.json"]
    meta = json.loads((folder / "adaptrix.json").read_text())
    for key in ("name", "version", "description", "base_model", "family", "target_layers", "target_modules", "rank",
                "alpha", "created_date", "performance_metrics", "routing", "weights_sha256"):
        assert key in meta
    assert meta["weights_sha256"] == hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert meta["family"] == "llama" and meta["target_layers"] == [0, 1]
    # PEFT itself loads the folder and computes the same thing as the engine.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("llama")))
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    tokenizer = trained.backend.tokenizer
    prompt = trained.backend.render_chat([{"role": "user", "content": "say alpha"}], {})
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = peft_model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=trained.backend.eos_token_ids,
                                  pad_token_id=tokenizer.pad_token_id)
    peft_text = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert peft_text == trained.generate("say alpha", adapter="yes", **GREEDY)


def test_manager_list_metadata_delete_export_import(trained, store, tmp_path):
    manager = AdapterManager(store)
    assert manager.names() == ["no", "yes"]
    assert manager.metadata("yes").rank == 16
    exported = manager.export("yes", tmp_path / "exported")
    assert (exported / "adapter_model.safetensors").is_file()
    with pytest.raises(AdapterExistsError):
        manager.export("yes", tmp_path / "exported")
    (exported / "adaptrix.json").unlink()  # as if made by plain PEFT
    meta = manager.import_peft(exported, "yes-copy", description="copied")
    assert meta.base_model == manager.metadata("yes").base_model and meta.description == "copied"
    assert meta.target_layers == [0, 1] and meta.weights_sha256
    with pytest.raises(AdapterExistsError):
        manager.import_peft(exported, "yes-copy")
    assert trained.generate("say beta", adapter="yes-copy", **GREEDY) == trained.generate("say beta", adapter="yes", **GREEDY)
    manager.delete("yes-copy")
    assert "yes-copy" not in manager.names()
    with pytest.raises(AdapterNotFoundError, match="available: no, yes"):
        manager.metadata("yes-copy")


def test_training_refuses_to_overwrite_by_accident(trained):
    with pytest.raises(AdapterExistsError, match="overwrite=True"):
        train_quick(trained, "yes")


# -- validation of broken adapters ------------------------------------------------------------------

def _break_truncate(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _break_tamper(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))


def _break_config(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{not json")


def _break_metadata(folder: Path) -> None:
    meta = json.loads((folder / "adaptrix.json").read_text())
    meta["rank"] = "sixteen"
    (folder / "adaptrix.json").write_text(json.dumps(meta))


def _break_pickle_only(folder: Path) -> None:
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")


def _break_other_base(folder: Path) -> None:
    meta = json.loads((folder / "adaptrix.json").read_text())
    meta["base_model"] = "Qwen/Qwen3-0.6B"
    meta["base_fingerprint"]["weights_sha256"] = "0" * 64  # a fingerprint that matched would identify the base
    (folder / "adaptrix.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "breaker, error, message",
    [
        (_break_truncate, AdapterCorruptError, "truncated or corrupt"),
        (_break_tamper, AdapterIntegrityError, "sha256"),
        (_break_config, AdapterCorruptError, "not valid JSON"),
        (_break_metadata, AdapterCorruptError, "rank"),
        (_break_pickle_only, AdapterCorruptError, "pickle files are never read"),
        (_break_other_base, AdapterIncompatibleError, "Qwen/Qwen3-0.6B"),
    ],
)
def test_broken_adapter_is_reported_and_left_untouched(trained, store, breaker, error, message):
    base_answer = trained.generate("say gamma", adapter=None, **GREEDY)
    reverse_answer = trained.generate("say gamma", adapter="no", **GREEDY)
    trained.unload_adapter("yes")
    breaker(store / "yes")
    before = folder_digest(store / "yes")
    with pytest.raises(error, match=message):
        trained.load_adapter("yes")
    with pytest.raises(error):
        trained.generate("say gamma", adapter="yes", **GREEDY)
    assert folder_digest(store / "yes") == before
    assert "yes" not in trained.loaded_adapters()
    assert trained.generate("say gamma", adapter=None, **GREEDY) == base_answer
    assert trained.generate("say gamma", adapter="no", **GREEDY) == reverse_answer
    listing = {row["name"]: row for row in trained.list_adapters()}
    if error is not AdapterIncompatibleError:  # the store alone cannot know the model
        assert listing["yes"]["problem"]


def test_adapter_of_other_shapes_is_rejected(trained, store, tmp_path):
    """Same family, same base model name, but weights for layers of another width: refused before loading."""
    import shutil

    from safetensors.torch import load_file, save_file

    from adaptrix_core.adapters.metadata import sha256_of

    # Export refuses destinations inside the store, so the doctored copy is put there by hand.
    folder = shutil.copytree(AdapterManager(store).export("yes", tmp_path / "exported"), store / "wide")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    wider = {key: torch.zeros(t.shape[0], t.shape[1] * 2) if ".lora_A." in key else t for key, t in weights.items()}
    save_file(wider, str(folder / "adapter_model.safetensors"))
    meta = json.loads((folder / "adaptrix.json").read_text())
    meta.update(name="wide", weights_sha256=sha256_of(folder / "adapter_model.safetensors"))
    (folder / "adaptrix.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterIncompatibleError, match=r"is 32->32 here but 64->32 in the adapter"):
        trained.load_adapter("wide")
    assert trained.generate("say iota", adapter="yes", **GREEDY) == "yes"


def test_missing_adapter(trained):
    with pytest.raises(AdapterNotFoundError, match="No adapter named 'nope'"):
        trained.load_adapter("nope")
    with pytest.raises(AdapterNotFoundError):
        trained.generate("hi", adapter="nope")


# -- serving ----------------------------------------------------------------------------------------

def test_adapters_change_answers_and_results_say_which(trained):
    base = trained.query("say alpha", adapter=None, **GREEDY)
    upper = trained.query("say alpha", adapter="yes", **GREEDY)
    assert upper.text == "yes" and base.text != upper.text
    assert upper.adapters == ["yes"] and base.adapters == []
    assert trained.generate("say kappa", adapter="no", **GREEDY) == "no"


def test_switch_active_load_unload(trained):
    assert trained.active_adapters() == []
    assert trained.switch_adapter("yes") == ["yes"]
    assert trained.query("say beta", **GREEDY).adapters == ["yes"]
    assert trained.switch_adapter("yes", "no") == ["no"]
    assert trained.generate("say beta", **GREEDY) == "no"
    with pytest.raises(AdapterError, match="not active"):
        trained.switch_adapter("yes", "no")
    trained.switch_adapter(None)
    assert trained.query("say beta", **GREEDY).adapters == []
    trained.unload_adapter("no")
    assert "no" not in trained.loaded_adapters()
    with pytest.raises(AdapterNotFoundError):
        trained.unload_adapter("no")
    assert trained.load_adapter("no").name == "no"
    assert "no" in trained.loaded_adapters()


def test_lru_cache_evicts_least_recently_used(trained, tiny_model_dir, store, single_torch_thread):
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store),
                               config={"adapters": {"directory": str(store), "cache_size": 2}}) as engine:
        AdapterManager(store).import_peft(store / "yes", "yes2")
        assert engine.preload(["yes", "no"]) == ["yes", "no"]
        engine.generate("say eta", adapter="yes", **GREEDY)  # upper becomes most recent
        engine.load_adapter("yes2")
        assert engine.loaded_adapters() == ["yes", "yes2"]
        report = engine.memory_report()
        assert set(report["adapters"]) == {"yes", "yes2"}
        assert all(size > 0 for size in report["adapters"].values())
        assert report["base_model_bytes"] > report["total_adapter_bytes"]
        # An evicted adapter is reloaded on demand.
        assert engine.generate("say eta", adapter="no", **GREEDY) == "no"


def test_weighted_composition(trained):
    upper = trained.generate("say delta", adapter="yes", **GREEDY)
    assert trained.generate("say delta", adapter={"yes": 1.0}, **GREEDY) == upper
    mixed = trained.query("say delta", adapter={"yes": 0.7, "no": 0.3}, **GREEDY)
    assert mixed.adapters == ["yes", "no"] and mixed.adapter_weights == {"yes": 0.7, "no": 0.3}
    assert trained.generate("say delta", adapter={"yes": 0.7, "no": 0.3}, **GREEDY) == mixed.text
    zero = trained.generate("say delta", adapter={"yes": 1.0, "no": 0.0}, **GREEDY)
    assert zero == upper
    with pytest.raises(InvalidGenerationParameterError, match="finite number"):
        trained.generate("say delta", adapter={"yes": "a lot"})
    with pytest.raises(InvalidGenerationParameterError, match="router"):
        trained.generate("say delta", adapter="auto")


def test_mixed_batch_equals_single_prompts(trained):
    prompts = ["say alpha", "say beta", "say gamma", "say delta", "say theta"]
    adapters = ["yes", "no", None, {"yes": 0.5, "no": 0.5}, "yes"]
    singles = [trained.generate(p, adapter=a, **GREEDY) for p, a in zip(prompts, adapters)]
    assert trained.generate_batch(prompts, adapters=adapters, **GREEDY) == singles
    assert singles[0] == "yes" and singles[1] == "no"
    with pytest.raises(InvalidGenerationParameterError, match="one entry per prompt"):
        trained.generate_batch(prompts, adapters=["yes"])


def test_concurrent_requests_never_see_each_others_adapter(trained):
    jobs = [("say alpha", "yes"), ("say alpha", "no"), ("say beta", None), ("say zeta", "yes")] * 4
    expected = {job: trained.generate(job[0], adapter=job[1], **GREEDY) for job in set(jobs)}
    results: dict[int, str] = {}

    def run(index: int, prompt: str, adapter) -> None:
        results[index] = trained.generate(prompt, adapter=adapter, **GREEDY)

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(jobs))] == [expected[job] for job in jobs]


def test_stream_with_adapter(trained):
    assert "".join(trained.stream("say alpha", adapter="yes", **GREEDY)) == "yes"


# -- training -------------------------------------------------------------------------------------

def test_training_scores_adapter_against_base(llama, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = answer_data("yes", 36)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    held = tmp_path / "test.jsonl"
    held.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                                      {"role": "assistant", "content": r["response"]}]}) + "\n"
                            for r in rows[30:]))
    steps = []
    meta = llama.train_adapter("shout", data, eval_data=held, layers="all", epochs=6, learning_rate=2e-2,
                               keywords=["say"], progress=lambda step, total, loss: steps.append((step, total, loss)))
    metrics = meta.performance_metrics
    assert metrics["metric"] == "exact_match" and metrics["eval_examples"] == 6
    assert metrics["exact_match"] >= metrics["base_exact_match"] + 0.2
    assert steps[-1][0] == steps[-1][1] == 24 and steps[-1][2] < steps[0][2]
    assert meta.routing.keywords == ["say"] and meta.routing.example_prompts


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n', "line 1"),
        ('{"prompt": "a", "response": "b"}\nnot json\n', "line 2 is not valid JSON"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n', "at least a user and an assistant"),
        ("", "no examples"),
    ],
)
def test_bad_training_data(llama, tmp_path, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    with pytest.raises(TrainingDataError, match=message):
        llama.train_adapter("bad", data)
    assert "bad" not in llama.loaded_adapters()
    assert not (Path(llama.config.adapters.directory) / "bad").exists()
