"""Configuration: defaults, YAML file, ADAPTRIX_* environment variables, overrides, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.config import AdaptrixConfig, default_config_yaml, load_config
from adaptrix_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_default_yaml_matches_the_models():
    assert (REPO / "configs" / "default.yaml").read_text() == default_config_yaml()
    assert load_config(REPO / "configs" / "default.yaml", environ={}) == AdaptrixConfig()


def test_every_field_has_a_description():
    sections = [AdaptrixConfig] + [type(getattr(AdaptrixConfig(), name)) for name in ("model", "generation", "adapters")]
    for section in sections:
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"


def test_precedence_file_then_environment_then_overrides(tmp_path):
    config_file = tmp_path / "adaptrix.yaml"
    config_file.write_text("model:\n  device: cpu\n  dtype: bfloat16\ngeneration:\n  max_new_tokens: 50\n")
    environ = {"ADAPTRIX_MODEL__DTYPE": "float16", "ADAPTRIX_ADAPTERS__CACHE_SIZE": "5",
               "ADAPTRIX_LOAD_PLUGINS": "family_llama"}
    config = load_config(config_file, overrides={"generation": {"max_new_tokens": 9, "top_p": None}}, environ=environ)
    assert config.model.device == "cpu"           # file
    assert config.model.dtype == "float16"        # environment beats file
    assert config.adapters.cache_size == 5        # environment, coerced to int
    assert config.generation.max_new_tokens == 9  # override beats file
    assert config.generation.top_p is None        # None overrides are ignored


def test_config_file_named_by_environment(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("adapters:\n  directory: /srv/adapters\n")
    assert load_config(environ={"ADAPTRIX_CONFIG": str(config_file)}).adapters.directory == "/srv/adapters"


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("model:\n  dtype: float8\n", "model.dtype"),
        ("generation:\n  top_p: 2\n", "generation.top_p"),
        ("modle:\n  device: cpu\n", "modle"),
        ("- just\n- a list\n", "mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_files_raise_config_error(tmp_path, yaml_text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, environ={})


def test_bad_environment_value_raises_config_error():
    with pytest.raises(ConfigError, match="adapters.cache_size"):
        load_config(environ={"ADAPTRIX_ADAPTERS__CACHE_SIZE": "many"})


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_engine_arguments_override_config_object():
    config = AdaptrixConfig.model_validate({"model": {"device": "cuda", "model_id": "some/model"}})
    engine = ModularAdaptrixEngine("other-model-folder", device="cpu", adapters_dir="my_adapters", config=config)
    assert engine.config.model.device == "cpu"
    assert engine.model_id == "other-model-folder"
    assert engine.config.adapters.directory == "my_adapters"
    assert ModularAdaptrixEngine(config={"model": {"dtype": "bfloat16"}}).config.model.dtype == "bfloat16"
    with pytest.raises(ConfigError):
        ModularAdaptrixEngine(config={"model": {"dtype": "int3"}})
    with pytest.raises(ConfigError, match="AdaptrixConfig"):
        ModularAdaptrixEngine(config=42)
