"""Plugin loading: built-in entry points, the allow-list, a third-party family plugin, broken plugins."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import build_tiny_model

from adaptrix_core import ModularAdaptrixEngine, hookimpl
from adaptrix_core.cli import cli
from adaptrix_core.errors import BackendNotFoundError, UnsupportedFamilyError
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.plugins import ALLOW_LIST_VARIABLE, get_plugin_manager, load_failures, reload_plugins
from adaptrix_core.registry import collect

THIRD_PARTY = Path(__file__).parent / "third_party"
BUILTIN_FAMILIES = {"llama", "qwen", "phi", "gemma", "generic"}


@pytest.fixture
def plugin_sandbox():
    """Restore sys.path, the allow-list variable and the plugin manager after the test."""
    saved_path, saved_allow = list(sys.path), os.environ.get(ALLOW_LIST_VARIABLE)
    yield
    sys.path[:] = saved_path
    if saved_allow is None:
        os.environ.pop(ALLOW_LIST_VARIABLE, None)
    else:
        os.environ[ALLOW_LIST_VARIABLE] = saved_allow
    importlib.invalidate_caches()
    reload_plugins()


def _add_site(name: str) -> None:
    sys.path.insert(0, str(THIRD_PARTY / name))
    importlib.invalidate_caches()
    reload_plugins()


@pytest.fixture(scope="module")
def stablelm_dir(tmp_path_factory) -> Path:
    return build_tiny_model("stablelm", tmp_path_factory.mktemp("stablelm"))


def test_builtin_plugins_register_through_entry_points():
    registry = collect()
    assert BUILTIN_FAMILIES <= set(registry.families)
    assert "hf" in registry.backends
    assert registry.provided_by["families"]["qwen"] == "family_qwen"
    assert registry.provided_by["backends"]["hf"] == "backend_hf"
    assert registry.problems == []


def test_allow_list_limits_loaded_plugins(plugin_sandbox, tiny_model_dir):
    os.environ[ALLOW_LIST_VARIABLE] = "family_llama,backend_hf"
    reload_plugins()
    registry = collect()
    assert set(registry.families) == {"llama"}
    assert set(registry.backends) == {"hf"}
    engine = ModularAdaptrixEngine(str(tiny_model_dir("qwen3")), device="cpu")
    with pytest.raises(UnsupportedFamilyError, match="ADAPTRIX_LOAD_PLUGINS"):
        engine.initialize()


def test_empty_allow_list_means_no_backend(plugin_sandbox, tiny_model_dir):
    os.environ[ALLOW_LIST_VARIABLE] = ""
    reload_plugins()
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu")
    with pytest.raises(BackendNotFoundError, match="'hf' is not registered"):
        engine.initialize()


def test_unknown_backend_name_is_a_typed_error(tiny_model_dir):
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", backend="tensorrt")
    with pytest.raises(BackendNotFoundError, match="Registered backends: hf"):
        engine.initialize()


def test_model_without_its_family_plugin_falls_back_to_generic(stablelm_dir):
    with ModularAdaptrixEngine(str(stablelm_dir), device="cpu") as engine:
        assert engine.get_model_info()["family"] == "generic"


def test_third_party_family_plugin_is_used_by_the_engine(plugin_sandbox, stablelm_dir):
    _add_site("site")
    registry = collect()
    assert registry.provided_by["families"]["stablelm"] == "example_stablelm"
    with ModularAdaptrixEngine(str(stablelm_dir), device="cpu") as engine:
        info = engine.get_model_info()
        assert info["family"] == "stablelm"
        assert info["max_context"] == min(4096, info["max_context"])
        result = engine.query("hello there", max_new_tokens=4, temperature=0)
        assert result.family == "stablelm"
        assert 1 <= result.completion_tokens <= 4
        # Generation defaults come from the plugin's family data when not overridden.
        defaults = engine.query("hello", max_new_tokens=2).generation
        assert (defaults["temperature"], defaults["top_p"]) == (0.5, 0.8)


def test_cli_lists_plugins_and_what_they_registered(plugin_sandbox):
    _add_site("site")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    entries = {entry["name"]: entry for entry in json.loads(result.stdout)["plugins"]}
    assert entries["example_stablelm"]["families"] == ["stablelm"]
    assert entries["backend_hf"]["backends"] == ["hf"]
    assert all(entries[f"family_{name}"]["families"] == [name] for name in BUILTIN_FAMILIES)


def test_broken_plugin_is_reported_not_fatal(plugin_sandbox, tiny_model_dir):
    _add_site("broken")
    assert [failure.name for failure in load_failures] == ["broken_plugin"]
    assert "not-installed-anywhere" in load_failures[0].error
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    entries = {entry["name"]: entry for entry in json.loads(result.stdout)["plugins"]}
    assert entries["broken_plugin"]["loaded"] is False
    assert "ImportError" in entries["broken_plugin"]["error"]
    table = CliRunner().invoke(cli, ["plugins"])
    assert "broken_plugin" in table.output and "failed" in table.output
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu") as engine:
        assert engine.get_model_info()["family"] == "llama"


class _DuplicateFamily:
    @hookimpl
    def register_model_families(self, register):
        register(ModelFamily(name="llama", model_types=("nothing",)))
        register("not a family")


def test_third_party_registration_overrides_builtin_with_a_warning(plugin_sandbox, caplog):
    manager = get_plugin_manager()
    manager.register(_DuplicateFamily(), name="duplicate_family")
    with caplog.at_level("WARNING", logger="adaptrix.plugins"):
        registry = collect(manager)
    assert registry.provided_by["families"]["llama"] == "duplicate_family"
    assert registry.families["llama"].model_types == ("nothing",)
    assert registry.overrides == [{"kind": "family", "name": "llama", "winner": "duplicate_family", "loser": "family_llama"}]
    assert "overrides family 'llama' registered by 'family_llama'" in caplog.text
    assert any("expects a ModelFamily" in p for p in registry.problems)
    report = {entry["name"]: entry for entry in registry.plugins_report(manager)}
    assert report["family_llama"]["overridden"] == ["family llama (by duplicate_family)"]
    assert report["duplicate_family"]["families"] == ["llama"]


def _family_plugin(label: str):
    class Plugin:
        @hookimpl
        def register_model_families(self, register):
            register(ModelFamily(name="shared", model_types=(label,)))

    return Plugin()


@pytest.mark.parametrize("registration_order", [("zeta", "alpha"), ("alpha", "zeta")])
def test_precedence_never_depends_on_discovery_order(plugin_sandbox, registration_order):
    manager = get_plugin_manager()
    for name in registration_order:
        manager.register(_family_plugin(name), name=f"{name}_plugin")
    registry = collect(manager)
    # Built-ins first, then third-party plugins by name: the last one by name wins.
    assert registry.provided_by["families"]["shared"] == "zeta_plugin"
    assert registry.families["shared"].model_types == ("zeta",)
    assert [o["winner"] for o in registry.overrides] == ["zeta_plugin"]


class _WrongRouter:
    name = "wrong"

    def __init__(self):  # a router factory must accept (settings, resources)
        pass


class _WrongRouterPlugin:
    @hookimpl
    def register_routers(self, register):
        register("wrong", _WrongRouter)


def test_router_factory_with_wrong_signature_fails_at_plugin_load(plugin_sandbox, tmp_path):
    from adaptrix_core.errors import PluginError

    manager = get_plugin_manager()
    manager.register(_WrongRouterPlugin(), name="wrong_router")
    registry = collect(manager)
    assert "wrong" not in registry.routers
    assert any("must accept (settings, resources)" in p for p in registry.problems)
    engine = ModularAdaptrixEngine(adapters_dir=str(tmp_path), router="wrong")
    with pytest.raises(PluginError, match="'wrong_router' registered router 'wrong' wrongly"):
        engine.route("hello")


def test_third_party_package_adds_family_router_and_cli_command(plugin_sandbox, stablelm_dir, tmp_path):
    _add_site("site")
    registry = collect()
    assert registry.provided_by["routers"]["mention"] == "example_stablelm"
    # The router, through the public engine: "@name" in the prompt picks that adapter.
    store = tmp_path / "store"
    engine = ModularAdaptrixEngine(str(stablelm_dir), device="cpu", adapters_dir=str(store), router="mention")
    engine.create_adapter("poems", layers="all", rank=4)
    engine.save_adapter("poems", description="writes poems")
    result = engine.query("@poems write about rain", adapter="auto", max_new_tokens=3, temperature=0)
    assert result.adapters == ["poems"] and result.routing["router"] == "mention"
    assert engine.query("plain question", adapter="auto", max_new_tokens=3, temperature=0).adapters == []
    engine.cleanup()
    # The CLI command, through the real command line.
    run = CliRunner().invoke(cli, ["stablelm-info"])
    assert run.exit_code == 0, run.output
    assert run.output.strip() == "stablelm: Stability AI StableLM models. (context 4096)"
    assert "stablelm-info" in CliRunner().invoke(cli, ["--help"]).output
    listing = json.loads(CliRunner().invoke(cli, ["router", "list", "--json"]).stdout)
    assert {"name": "mention", "plugin": "example_stablelm"}.items() <= next(
        r for r in listing["routers"] if r["name"] == "mention").items()
