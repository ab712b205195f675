"""Adapters made elsewhere just work: a base model is identified by its fingerprint or any of its ids.

Plain-peft LoRA folders trained on the served weights import (engine and CLI) and serve; one trained
on other weights of the same shapes is refused unless the user names the served model as its base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from peft_helpers import GREEDY, make_peft_adapter, other_weights_model

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.base_identity import BaseIdentity, base_problems, is_path
from adaptrix_core.cli import cli
from adaptrix_core.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterIncompatibleError,
    AdapterNotFoundError,
)


@pytest.fixture(scope="module")
def bases(tiny_model_dir, tmp_path_factory):
    """The served tiny llama, a copy of it elsewhere, another model with the same folder name and shapes
    but other weights, and plain-peft adapters trained on the served one and on the other one."""
    root = tmp_path_factory.mktemp("bases")
    served = tiny_model_dir("llama")
    other = other_weights_model(served, root / "elsewhere" / served.name)
    return {
        "served": served,
        "copy": Path(shutil.copytree(served, root / "copy" / served.name)),
        "other": other,
        "on_served": make_peft_adapter(served, root / "on-served", seed=0),
        "on_other": make_peft_adapter(other, root / "on-other", seed=1),
    }


@pytest.fixture
def engine(bases, tmp_path, single_torch_thread):
    with ModularAdaptrixEngine(str(bases["served"]), device="cpu", adapters_dir=str(tmp_path / "store")) as engine:
        yield engine


def peft_answer(model_dir: Path, adapter_dir: Path, engine: ModularAdaptrixEngine, prompt: str) -> str:
    """What peft itself generates with the adapter on the model folder (greedy, chat template)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(adapter_dir)).eval()
    tokenizer = engine.backend.tokenizer
    rendered = engine.backend.render_chat([{"role": "user", "content": prompt}], {})
    ids = tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=GREEDY["max_new_tokens"], do_sample=False,
                             eos_token_id=engine.backend.eos_token_ids, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


# -- the engine -------------------------------------------------------------------------------------

def test_peft_adapter_trained_on_the_served_folder_imports_and_serves(engine, bases):
    config = json.loads((bases["on_served"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(bases["served"])  # peft records the folder path
    meta = engine.import_adapter(bases["on_served"], "plain", description="made with peft")
    assert meta.base_model == str(bases["served"]) and meta.family == "llama" and meta.description == "made with peft"
    assert meta.base_fingerprint == engine.backend.fingerprint()
    assert engine.adapter_manager.validate("plain")[0] == meta
    answer = engine.generate("hello", adapter="plain", **GREEDY)
    assert answer != engine.generate("hello", adapter=None, **GREEDY)
    assert answer == peft_answer(bases["served"], bases["on_served"], engine, "hello")


def test_adapter_of_other_weights_is_refused_unless_its_base_id_matches(engine, bases):
    report = engine.check_adapter_compatibility(bases["on_other"])
    assert not report.compatible
    assert report.problems[0].startswith(f"The adapter was trained on base model {str(bases['other'])!r}; this engine serves ")
    for base_model in (None, "someone/other-model", str(bases["copy"].parent / "elsewhere")):
        with pytest.raises(AdapterIncompatibleError, match="trained on base model"):
            engine.import_adapter(bases["on_other"], "foreign", base_model=base_model)
    assert engine.adapter_manager.names() == []
    # The user says it was trained on the served model: by its id, or by its folder.
    for name, base_model in (("by-id", bases["served"].name), ("by-path", str(bases["served"]))):
        meta = engine.import_adapter(bases["on_other"], name, base_model=base_model)
        assert meta.base_model == base_model and meta.base_fingerprint == engine.backend.fingerprint()
        assert isinstance(engine.generate("hello", adapter=name, **GREEDY), str)


def test_fingerprint_identifies_the_weights_not_the_path(bases, tmp_path, single_torch_thread):
    store = str(tmp_path / "store")

    def engine_on(kind: str, **config):
        return ModularAdaptrixEngine(str(bases[kind]), device="cpu", adapters_dir=store,
                                     config={"adapters": {"directory": store}, **config})

    with engine_on("served") as served:
        fingerprint = served.backend.fingerprint()
        served.import_adapter(bases["on_served"], "plain")
        served.create_adapter("made-here", layers="all")
        assert served.save_adapter("made-here").base_fingerprint == fingerprint
    with engine_on("served", model={"dtype": "bfloat16"}) as half:
        assert half.backend.fingerprint() == fingerprint  # weights are hashed as bfloat16
    with engine_on("copy") as copy:
        assert copy.backend.fingerprint() == fingerprint
        assert copy.load_adapter("plain").base_model == str(bases["served"])  # another path, same weights
        copy.load_adapter("made-here")
        # An adapter without a fingerprint names the served folder: only its path would identify it.
        assert not copy.check_adapter_compatibility(bases["on_served"]).compatible
    with engine_on("other") as other:
        assert other.backend.fingerprint()["weights_sha256"] != fingerprint["weights_sha256"]
        assert other.backend.fingerprint()["layer_shapes_sha256"] == fingerprint["layer_shapes_sha256"]
        with pytest.raises(AdapterIncompatibleError, match="trained on base model"):
            other.load_adapter("plain")
        # Same folder name, so the id matches; the fingerprint says the weights differ: a warning.
        report = other.check_adapter_compatibility(Path(store) / "made-here")
        assert report.compatible and any("fingerprint differs" in w for w in report.warnings)


def test_a_matching_fingerprint_beats_a_foreign_id(engine, bases):
    engine.import_adapter(bases["on_served"], "plain")
    meta_file = engine.adapter_manager.path("plain") / "adaptrix.json"
    meta = json.loads(meta_file.read_text())
    meta["base_model"] = "Qwen/Qwen3-0.6B"
    meta_file.write_text(json.dumps(meta))
    assert engine.load_adapter("plain").base_model == "Qwen/Qwen3-0.6B"
    engine.unload_adapter("plain")
    meta["base_fingerprint"] = None
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(AdapterIncompatibleError, match="Qwen/Qwen3-0.6B"):
        engine.load_adapter("plain")


def test_import_checks_first_and_overwrites_a_loaded_adapter(engine, bases, tmp_path):
    with pytest.raises(AdapterError, match="Invalid adapter name"):
        engine.import_adapter(bases["on_served"], "../escape")
    with pytest.raises(AdapterNotFoundError):
        engine.import_adapter(tmp_path / "missing", "x")
    with pytest.raises(AdapterError, match="base_model"):
        engine.import_adapter(bases["on_served"], "x", base_model="  ")
    assert engine.adapter_manager.names() == []
    engine.import_adapter(bases["on_served"], "x")
    engine.import_adapter(bases["on_other"], "y", base_model=bases["served"].name)
    before = engine.generate("hello", adapter="x", **GREEDY)
    with pytest.raises(AdapterExistsError, match="overwrite=True"):
        engine.import_adapter(bases["on_other"], "x", base_model=bases["served"].name)
    assert engine.generate("hello", adapter="x", **GREEDY) == before
    engine.import_adapter(bases["on_other"], "x", base_model=bases["served"].name, overwrite=True)
    assert engine.generate("hello", adapter="x", **GREEDY) == engine.generate("hello", adapter="y", **GREEDY)
    engine.create_adapter("unsaved")
    with pytest.raises(AdapterExistsError, match="unsaved"):
        engine.import_adapter(bases["on_served"], "unsaved", overwrite=True)


# -- the CLI ----------------------------------------------------------------------------------------

@pytest.fixture
def run(bases, tmp_path, monkeypatch, single_torch_thread):
    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(tmp_path / "cache"))

    def invoke(*args: str, ok: bool = True, model: str | None = None):
        common = ["--model", model or str(bases["served"]), "--device", "cpu", "--adapters-dir", str(tmp_path / "adapters")]
        result = CliRunner().invoke(cli, [*args, *common])
        assert (result.exit_code == 0) == ok, result.output
        result.flat = " ".join(result.output.split())  # rich wraps long lines
        return result

    return invoke


def test_cli_import_checks_against_the_model(run, bases, tmp_path):
    imported = json.loads(run("adapters", "import", str(bases["on_served"]), "--name", "plain", "--json").stdout)
    assert imported["base_model"] == str(bases["served"]) and imported["base_fingerprint"]["format"] == 1
    answer = json.loads(run("query", "hello", "--adapter", "plain", "--temperature", "0", "--max-new-tokens", "4",
                            "--json").stdout)
    assert answer["adapters"] == ["plain"]
    refused = run("adapters", "import", str(bases["on_other"]), "--name", "foreign", ok=False)
    assert "trained on base model" in refused.flat and "--base-model 'tiny-llama'" in refused.flat
    assert not (tmp_path / "adapters" / "foreign").exists()
    as_json = json.loads(run("adapters", "import", str(bases["on_other"]), "--name", "foreign", "--json", ok=False).stdout)
    assert as_json["error"]["type"] == "AdapterIncompatibleError"
    vouched = json.loads(run("adapters", "import", str(bases["on_other"]), "--name", "foreign", "--base-model",
                             bases["served"].name, "--json").stdout)
    assert vouched["base_model"] == bases["served"].name
    listing = json.loads(run("adapters", "validate", "--json").stdout)["adapters"]
    assert listing == {"foreign": {"valid": True, "problem": None}, "plain": {"valid": True, "problem": None}}


def test_cli_import_cheap_checks_come_before_the_model(run, bases, tmp_path):
    run("adapters", "import", str(bases["on_served"]), "--name", "plain")
    nowhere = str(tmp_path / "no-such-model")  # loading it would fail: these errors come first
    taken = run("adapters", "import", str(bases["on_served"]), "--name", "plain", ok=False, model=nowhere)
    assert "already exists" in taken.flat and "use --overwrite" in taken.flat
    bad_name = run("adapters", "import", str(bases["on_served"]), "--name", "../x", ok=False, model=nowhere)
    assert "Invalid adapter name" in bad_name.flat
    not_peft = run("adapters", "import", str(tmp_path), "--name", "x", ok=False, model=nowhere)
    assert "adapter_config.json" in not_peft.flat
    run("adapters", "import", str(bases["on_served"]), "--name", "plain", "--overwrite")


# -- identity rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id, path", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", False), ("tiny-llama", False), ("SmolLM2-135M-Instruct.Q4_1.gguf", False),
    ("/models/tiny-llama", True), ("~/models/x", True), ("./x", True), ("../x/y", True), ("C:\\models\\x", True),
    ("models/org/name", True),
])
def test_ids_that_are_paths(model_id, path):
    assert is_path(model_id) is path


def test_identity_rules(tmp_path):
    fingerprint = {"format": 1, "architecture": "A", "num_layers": 2, "hidden_size": 8, "vocab_size": 10,
                   "layer_shapes_sha256": "s", "weights_sha256": "w"}
    ours = BaseIdentity.from_ids(["org/Tiny-Model", "Tiny-Model.Q4_1.gguf"], paths=[str(tmp_path / "tiny-model")],
                                 fingerprint=fingerprint)
    assert base_problems("org/tiny-model", None, ours) == ([], [])
    assert base_problems("elsewhere/Tiny-Model-Q8_0.gguf", None, ours) == ([], [])
    assert base_problems(str(tmp_path / "x" / ".." / "tiny-model"), None, ours) == ([], [])
    assert base_problems(str(tmp_path / "other" / "tiny-model"), None, ours)[0]  # same name, another folder
    assert base_problems("Qwen/Qwen3-0.6B", dict(fingerprint, hashed_rows=1), ours) == ([], [])  # the weights decide
    other = dict(fingerprint, weights_sha256="v")
    problems, _ = base_problems("Qwen/Qwen3-0.6B", other, ours)
    assert "fingerprint differs too" in problems[0]
    assert base_problems(None, other, ours)[0][0].startswith("The adapter was trained on another base model")
    assert "fingerprint differs" in base_problems("org/tiny-model", other, ours)[1][0]
    assert base_problems(None, dict(other, format=2), ours) == ([], [
        "The adapter records no base model; it is only checked by family and shapes."])
    assert base_problems(42, None, ours)[0]


# -- the real default model -------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_accepts_adapters_named_by_any_of_its_ids(default_engine, tmp_path):
    """A peft adapter trained on the converted default-model folder, or on the GGUF's folder, fits."""
    info = default_engine.get_model_info()
    demo = Path(__file__).resolve().parents[1] / "adapters" / "dates"
    assert default_engine.check_adapter_compatibility(demo).compatible
    folder = tmp_path / "made-elsewhere"
    shutil.copytree(demo, folder)
    (folder / "adaptrix.json").unlink()
    gguf_folder = str(Path(info["source"]).parent)
    for base, fits in ((info["weights_path"], True), (gguf_folder, True), (info["source"], True),
                       ("SmolLM2-135M-Instruct", True), (str(tmp_path / "SmolLM2-135M-Instruct"), False)):
        config = json.loads((demo / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base
        (folder / "adapter_config.json").write_text(json.dumps(config))
        report = default_engine.check_adapter_compatibility(folder)
        assert report.compatible is fits, (base, report.problems)


@pytest.mark.slow
def test_demo_adapters_load_wherever_the_default_weights_are_served(default_engine):
    """The demo adapters record the default model's fingerprint: served from its converted folder (whose
    name is not the hub id), they are recognised by their weights."""
    store = Path(__file__).resolve().parents[1] / "adapters"
    fingerprint = default_engine.backend.fingerprint()
    for name in ("arithmetic", "dates", "extraction"):
        assert json.loads((store / name / "adaptrix.json").read_text())["base_fingerprint"] == fingerprint
    converted = default_engine.get_model_info()["weights_path"]
    with ModularAdaptrixEngine(converted, device="cpu", adapters_dir=str(store)) as engine:
        assert engine.backend.fingerprint() == fingerprint
        assert engine.get_model_info()["base_model"] != "HuggingFaceTB/SmolLM2-135M-Instruct"
        prompt = "Convert this date to ISO format (YYYY-MM-DD): March 5, 2021"
        assert engine.generate(prompt, adapter="dates", temperature=0, max_new_tokens=16) == "2021-03-05"
