"""No adapter can change the shared base model, and no composition weight can break sampling.

Every PEFT option and saved tensor that adds, replicates or replaces base modules is refused by name
(by the compatibility check, ``import_adapter``, ``load_adapter`` and the backend itself); after any
sequence of loads, compositions, evictions and failed loads, also half-way through peft's injection,
the base model answers, computes and is stored bit for bit as in a fresh engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from peft_helpers import (
    GREEDY,
    assert_base_intact,
    edit_config,
    make_peft_adapter,
    snapshot,
)
from safetensors.torch import load_file, save_file

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.choice import MAX_ADAPTER_WEIGHT
from adaptrix_core.adapters.lora_options import REFUSED_OPTIONS, SERVED_OPTIONS
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.errors import (
    AdapterError,
    AdapterIncompatibleError,
    InvalidGenerationParameterError,
)

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def made(tiny_model_dir, tmp_path_factory):
    """Plain-peft LoRA folders for the tiny llama: 'plain' (q/v, all layers) and 'other' (q/k/o, rsLoRA)."""
    root = tmp_path_factory.mktemp("peft-made")
    model = tiny_model_dir("llama")
    return {
        "plain": make_peft_adapter(model, root / "plain", seed=0),
        "other": make_peft_adapter(model, root / "other", seed=1, r=2, use_rslora=True,
                                   target_modules=["q_proj", "k_proj", "o_proj"]),
        "third": make_peft_adapter(model, root / "third", seed=2),
    }


@pytest.fixture(scope="module")
def shared(tiny_model_dir, tmp_path_factory, single_torch_thread):
    """One engine for the refusal tests, with the snapshot of its fresh state: every test checks against it."""
    store = tmp_path_factory.mktemp("shared-store")
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store)) as engine:
        yield engine, snapshot(engine)


def variant(source: Path, folder: Path, **changes) -> Path:
    shutil.copytree(source, folder)
    edit_config(folder, **changes)
    return folder


def assert_refused_everywhere(engine, fresh, folder: Path, name: str, needle: str, backend_too: bool = True) -> None:
    """Refused by the check, by import_adapter (nothing written), by load_adapter and by the backend itself."""
    report = engine.check_adapter_compatibility(folder)
    assert not report.compatible and any(needle in problem for problem in report.problems), report.problems
    with pytest.raises(AdapterIncompatibleError, match=needle):
        engine.import_adapter(folder, name)
    assert not engine.adapter_manager.path(name).exists()
    # Put it in the store by hand: the store's own schema check already refuses some of these options.
    shutil.copytree(folder, engine.adapter_manager.path(name))
    with pytest.raises(AdapterIncompatibleError, match=needle):
        engine.load_adapter(name)
    assert name not in engine.loaded_adapters()
    if backend_too:  # the backend refuses too, whoever calls it
        config = json.loads((folder / "adapter_config.json").read_text())
        with pytest.raises(AdapterIncompatibleError):
            engine.backend.inject_lora(name + "-direct", config, folder / WEIGHTS)
    assert_base_intact(engine, fresh)


def test_every_lora_option_of_this_peft_is_classified():
    """A new peft option is either served knowingly or refused: none slips through unreviewed."""
    from peft import LoraConfig

    fields = {field.name for field in dataclasses.fields(LoraConfig)}
    assert fields <= SERVED_OPTIONS | set(REFUSED_OPTIONS), sorted(fields - SERVED_OPTIONS - set(REFUSED_OPTIONS))


REFUSED = [
    ("layer_replication", [[0, 2], [1, 2]]),
    ("modules_to_save", ["lm_head"]),
    ("trainable_token_indices", [3, 4]),
    ("target_parameters", ["mlp.down_proj.weight"]),
    ("use_dora", True),
    ("lora_bias", True),
    ("use_qalora", True),
    ("alora_invocation_tokens", [5, 6]),
    ("arrow_config", {"top_k": 1}),
    ("use_bdlora", {"nblocks": 2}),
    ("velora_config", {"rank": 2}),
    ("monteclora_config", {"n_samples": 2}),
    ("kasa_config", {"beta": 1.0}),
    ("megatron_config", {"tensor_model_parallel_size": 1}),
    ("bias", "all"),
    ("bias", "lora_only"),
    *[("init_lora_weights", init) for init in ("pissa", "pissa_niter_4", "olora", "corda", "loftq", "mica", "lora_ga")],
]


@pytest.mark.parametrize("option, value", REFUSED, ids=[f"{o}={v}" for o, v in REFUSED])
def test_base_changing_option_is_refused_by_name(shared, made, tmp_path, option, value):
    engine, fresh = shared
    folder = variant(made["plain"], tmp_path / "bad", **{option: value})
    name = f"bad-{option}-{abs(hash(str(value))) % 10**6}"
    assert_refused_everywhere(engine, fresh, folder, name, option)


@pytest.mark.parametrize("targets, needle", [
    (["embed_tokens"], "embed_tokens"),
    (["q_proj", "lm_head"], "lm_head"),
    (".*embed_tokens", "embed_tokens"),
    (r"model\.layers\.\d+\.(self_attn\.q_proj|input_layernorm)", "input_layernorm"),
])
def test_targets_beyond_the_projections_are_refused(shared, made, tmp_path, targets, needle):
    engine, fresh = shared
    folder = variant(made["plain"], tmp_path / "bad", target_modules=targets)
    name = f"target-{abs(hash(str(targets))) % 10**6}"
    # lm_head is a Linear layer: the backend alone would serve it; the family check refuses it.
    assert_refused_everywhere(engine, fresh, folder, name, needle, backend_too="lm_head" not in targets)


def test_a_malformed_target_pattern_is_a_config_error(shared, made, tmp_path):
    from adaptrix_core.errors import AdapterConfigError

    engine, fresh = shared
    folder = variant(made["plain"], tmp_path / "bad", target_modules="(")
    with pytest.raises(AdapterConfigError, match="not a valid regular expression"):
        engine.import_adapter(folder, "broken-pattern")
    assert not engine.adapter_manager.path("broken-pattern").exists()
    assert_base_intact(engine, fresh)


def test_projection_patterns_are_served(shared, made, tiny_model_dir, tmp_path):
    engine, fresh = shared
    folder = variant(made["plain"], tmp_path / "regex", target_modules=r".*\.(q_proj|v_proj)")
    assert engine.check_adapter_compatibility(folder).compatible
    engine.import_adapter(folder, "regex-targets")
    engine.import_adapter(made["plain"], "list-targets")
    # The same weights on the same layers, selected by a pattern instead of a list: the same answers.
    assert engine.generate("hello", adapter="regex-targets", **GREEDY) == engine.generate("hello", adapter="list-targets", **GREEDY)
    every = make_peft_adapter(tiny_model_dir("llama"), tmp_path / "all-linear", target_modules="all-linear")
    assert engine.check_adapter_compatibility(every).compatible
    engine.import_adapter(every, "all-linear")
    assert engine.generate("hello", adapter="all-linear", **GREEDY) != fresh["answers"][0]
    for name in ("regex-targets", "list-targets", "all-linear"):
        engine.unload_adapter(name)
    assert_base_intact(engine, fresh)


PEFT_FEATURES = [  # options for peft, the option named in the refusal, the refusal once the option is hidden
    ({"modules_to_save": ["lm_head"]}, "modules_to_save", "not LoRA A/B weights"),
    ({"trainable_token_indices": [3, 4]}, "trainable_token_indices", "not LoRA A/B weights"),
    ({"use_dora": True}, "use_dora", "not LoRA A/B weights"),
    ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication", "which this model does not have"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens", "not LoRA A/B weights"),
]


@pytest.mark.parametrize("options, option, hidden_needle", PEFT_FEATURES, ids=[o for _, o, _ in PEFT_FEATURES])
def test_adapters_made_with_base_changing_peft_features_are_refused(shared, tiny_model_dir, tmp_path, options, option,
                                                                     hidden_needle):
    """Real peft folders: refused by their option, and by their saved tensors when the option is hidden."""
    engine, fresh = shared
    folder = make_peft_adapter(tiny_model_dir("llama"), tmp_path / "made", **options)
    assert_refused_everywhere(engine, fresh, folder, f"made-{option}", option)
    hidden = variant(folder, tmp_path / "hidden", **{key: None for key in options})
    if option == "embed_tokens":
        edit_config(hidden, target_modules=["q_proj"])
    assert_refused_everywhere(engine, fresh, hidden, f"hidden-{option}", hidden_needle)


def test_extra_base_tensor_in_the_weights_file_never_reaches_the_base(shared, made, tmp_path):
    """A plain-LoRA config whose file also carries a base weight: peft would load it into the base model."""
    engine, fresh = shared
    folder = variant(made["plain"], tmp_path / "poisoned")
    state = load_file(str(folder / WEIGHTS))
    state["base_model.model.model.embed_tokens.weight"] = torch.zeros_like(engine.backend.model.get_input_embeddings().weight)
    save_file(state, str(folder / WEIGHTS))
    assert_refused_everywhere(engine, fresh, folder, "poisoned", "not LoRA A/B weights")


def test_adapter_saved_after_resizing_the_vocabulary_is_refused(shared, tiny_model_dir, tmp_path):
    """peft saves the whole resized embedding beside the LoRA weights; loading it would replace the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    engine, fresh = shared
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("llama")))
    model.resize_token_embeddings(model.config.vocab_size + 8)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(str(tmp_path / "resized"), save_embedding_layers=True)
    assert any("embed_tokens" in key for key in load_file(str(tmp_path / "resized" / WEIGHTS)))
    assert_refused_everywhere(engine, fresh, tmp_path / "resized", "resized", "not LoRA A/B weights")


def test_non_finite_lora_weights_are_refused(shared, made, tmp_path):
    engine, fresh = shared
    folder = variant(made["plain"], tmp_path / "nan")
    state = load_file(str(folder / WEIGHTS))
    first = sorted(state)[0]
    state[first][0, 0] = float("nan")
    save_file(state, str(folder / WEIGHTS))
    AdapterManager(engine.adapter_manager.directory).import_peft(folder, "nan-weights")
    with pytest.raises(AdapterIncompatibleError, match="non-finite"):
        engine.load_adapter("nan-weights")
    assert_base_intact(engine, fresh)


# -- any sequence, failures included ------------------------------------------------------------------

@contextlib.contextmanager
def injection_failing_after(calls: int, monkeypatch):
    """Make peft fail half-way through injecting LoRA layers (after ``calls`` layers were set up)."""
    from peft.tuners.lora.layer import LoraLayer

    original = LoraLayer.update_layer
    seen = {"calls": 0}

    def update_layer(self, *args, **kwargs):
        seen["calls"] += 1
        if seen["calls"] > calls:
            raise RuntimeError("simulated failure inside peft")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "update_layer", update_layer)
    try:
        yield seen
    finally:
        monkeypatch.setattr(LoraLayer, "update_layer", original)


def test_base_is_fresh_after_any_sequence_of_adapter_operations(tiny_model_dir, tmp_path, made, monkeypatch,
                                                                 single_torch_thread):
    store = tmp_path / "store"
    config = {"adapters": {"directory": str(store), "cache_size": 2}}
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", config=config) as engine:
        fresh = snapshot(engine)
        for name in ("plain", "other", "third"):
            engine.import_adapter(made[name], name)
        engine.import_adapter(variant(made["plain"], tmp_path / "regex", target_modules=r".*\.(q_proj|v_proj)"), "regex")
        poisoned = variant(made["plain"], tmp_path / "poisoned")
        state = load_file(str(poisoned / WEIGHTS))
        state["base_model.model.model.norm.weight"] = torch.zeros(32)
        save_file(state, str(poisoned / WEIGHTS))
        AdapterManager(store).import_peft(poisoned, "poisoned")
        partial = variant(made["plain"], tmp_path / "partial",
                          target_modules=r"model\.layers\.\d+\.(self_attn\.q_proj|input_layernorm)")
        partial_config = json.loads((partial / "adapter_config.json").read_text())
        data = [{"prompt": f"say {word}", "response": "yes"} for word in "alpha beta gamma delta".split()]

        def fail_mid_injection(name: str) -> None:
            with injection_failing_after(2, monkeypatch) as seen, pytest.raises(AdapterIncompatibleError, match="peft"):
                engine.load_adapter(name)
            assert seen["calls"] == 3 and name not in engine.loaded_adapters()

        steps = [
            ("fails half-way as the first adapter", lambda: fail_mid_injection("plain")),
            ("load", lambda: engine.load_adapter("plain")),
            ("generate", lambda: engine.generate("hello", adapter="plain", **GREEDY)),
            ("compose", lambda: engine.generate("hello", adapter={"plain": 0.5, "other": -0.5}, **GREEDY)),
            ("mixed batch", lambda: engine.generate_batch(["a", "b", "c"], adapters=["plain", None, {"plain": 1, "other": 1}], **GREEDY)),
            ("fails half-way beside others", lambda: fail_mid_injection("third")),
            ("poisoned file refused", lambda: pytest.raises(AdapterIncompatibleError, engine.load_adapter, "poisoned")),
            ("peft fails half-way by itself", lambda: pytest.raises(
                AdapterIncompatibleError, engine.backend.inject_lora, "partial", partial_config, partial / WEIGHTS)),
            ("load evicts", lambda: engine.load_adapter("third")),
            ("switch", lambda: engine.switch_adapter("other")),
            ("stream", lambda: "".join(engine.stream("hello", **GREEDY))),
            ("create and drop", lambda: (engine.create_adapter("scratch", layers="all"), engine.unload_adapter("scratch"))),
            ("train", lambda: engine.train_adapter("trained", data, epochs=1, eval_split=0.0, layers="all")),
            ("compose failure", lambda: pytest.raises(AdapterError, engine.generate, "x", adapter={"plain": 1, "regex": 1})),
            ("unload all", lambda: [engine.unload_adapter(n) for n in engine.loaded_adapters()]),
            ("load again", lambda: engine.generate("hello", adapter={"plain": 1.0, "third": 2.0}, **GREEDY)),
            ("unload all again", lambda: [engine.unload_adapter(n) for n in engine.loaded_adapters()]),
        ]
        for label, step in steps:
            step()
            try:
                assert_base_intact(engine, fresh)
            except AssertionError as exc:
                raise AssertionError(f"after step {label!r}: {exc}") from None
        assert engine.loaded_adapters() == []
        engine.generate("hello", adapter="plain", **GREEDY)  # still loads normally afterwards
        assert engine.loaded_adapters() == ["plain"]


def test_rslora_composition_keeps_each_part_at_its_own_scale(tiny_model_dir, tmp_path, made, single_torch_thread):
    """A mix {a: 1, b: 0} is exactly a, also for rsLoRA parts (peft gives the mix alpha/sqrt(r) otherwise)."""
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tmp_path)) as engine:
        engine.import_adapter(made["other"], "rs")
        engine.import_adapter(made["third"], "plain")
        engine.generate("hello", adapter={"rs": 1.0, "plain": 0.0}, **GREEDY)
        lora = engine.backend.lora
        layer = lora.peft.base_model.model.model.layers[1].self_attn.q_proj
        mix = lora.internal("mix(plain=0,rs=1)")
        assert torch.allclose(layer.get_delta_weight(mix), layer.get_delta_weight(lora.internal("rs")), atol=1e-6)


# -- composition weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [
    {"plain": 1e30}, {"plain": -1e30}, {"plain": MAX_ADAPTER_WEIGHT + 0.5}, {"plain": math.inf}, {"plain": math.nan},
    {"plain": 0}, {"plain": 0.0, "other": 0}, {"plain": True}, {"plain": "1"},
])
def test_out_of_range_weights_are_refused_before_anything_runs(shared, made, weights):
    engine, fresh = shared
    if "plain" not in engine.adapter_manager.names():
        engine.import_adapter(made["plain"], "plain")
        engine.import_adapter(made["other"], "other")
    loaded = engine.loaded_adapters()
    for call in (lambda: engine.generate("hello", adapter=weights, **GREEDY),
                 lambda: engine.query("hello", adapter=weights, **GREEDY),
                 lambda: engine.generate_batch(["a", "b"], adapters=[None, weights], **GREEDY),
                 lambda: engine.stream("hello", adapter=weights, **GREEDY)):
        with pytest.raises(InvalidGenerationParameterError, match="nonzero|from -10 to 10"):
            call()
    assert engine.loaded_adapters() == loaded
    assert_base_intact(engine, fresh)


def test_weights_at_the_bound_sample_finite_text(shared, made):
    engine, fresh = shared
    if "plain" not in engine.adapter_manager.names():
        engine.import_adapter(made["plain"], "plain")
        engine.import_adapter(made["other"], "other")
    for weights in ({"plain": MAX_ADAPTER_WEIGHT, "other": -MAX_ADAPTER_WEIGHT}, {"plain": -1.0}, {"plain": 1, "other": 0}):
        for temperature in (0, 1.0):
            text = engine.generate("hello", adapter=weights, temperature=temperature, seed=3, max_new_tokens=8)
            assert isinstance(text, str)
    assert_base_intact(engine, fresh)
