"""Property-based tests of the adapter store: random adapter configs, safetensors headers and names go
through the public API (AdapterManager.validate/import_peft/list/export, engine.load_adapter).

Properties: the only exceptions are adaptrix_core.errors ones; the files are byte for byte unchanged;
the store still lists (and the engine still serves) the good adapters; a weights file the store
accepts is one safetensors loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from adapter_helpers import (
    CONFIG,
    GOOD,
    META,
    WEIGHTS,
    clone_adapter,
    make_seed_store,
    read_header,
    safetensors_bytes,
    tree_digest,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.metadata import NAME_PATTERN, AdapterMetadata
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.errors import AdapterError, AdaptrixError, InvalidAdapterNameError

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.integers(min_value=-2**80, max_value=2**80),
                    st.floats(), st.text(max_size=12))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=8)
CONFIG_FIELDS = ["target_modules", "lora_alpha", "r", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
                 "lora_dropout", "bias", "fan_in_fan_out", "use_rslora", "use_dora", "init_lora_weights", "task_type",
                 "base_model_name_or_path", "peft_type", "modules_to_save", "exclude_modules", "inference_mode",
                 "layer_replication", "trainable_token_indices", "revision"]
config_changes = st.dictionaries(st.sampled_from(CONFIG_FIELDS), json_values, min_size=1, max_size=3)
# Whether layers_pattern / exclude_modules strings name parts of the model is for the model-side checks
# to say (a pattern naming no block list reaches peft, which raises NoMatchingPeftModuleError); the
# engine is fuzzed on every other field.
ENGINE_FIELDS = [field for field in CONFIG_FIELDS if field not in ("layers_pattern", "exclude_modules")]
engine_changes = st.dictionaries(st.sampled_from(ENGINE_FIELDS), json_values, min_size=1, max_size=3)
_GOOD_WEIGHTS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory, single_torch_thread):
    store = tmp_path_factory.mktemp("fuzz-store") / "adapters"
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store)) as engine:
        engine.initialize()
        make_seed_store(engine, store)
        for name in GOOD:
            engine.unload_adapter(name)
        yield engine


@pytest.fixture(scope="module")
def store(engine) -> Path:
    store = Path(engine.config.adapters.directory)
    _GOOD_WEIGHTS["path"] = store / "good" / WEIGHTS  # the strategy mutating a real header reads it
    return store


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-outside")


def _exercise(manager: AdapterManager, name: str, outside: Path) -> bool:
    """validate, import, export and list one store entry; True when it validated. Only typed errors allowed."""
    store = manager.directory
    before = {entry: tree_digest(store / entry) for entry in os.listdir(store)}
    valid = True
    try:
        manager.validate(name)
    except AdapterError:
        valid = False
    for attempt in (lambda: manager.import_peft(store / name, "fuzz-imported"),
                    lambda: manager.export(name, outside / "export", overwrite=True)):
        try:
            attempt()
            assert valid, "an adapter that does not validate was imported or exported"
        except AdapterError:
            pass
    rows = {row.name: row for row in manager.list()}
    for good in GOOD:
        assert rows[good].problem is None
    assert (rows[name].problem is None) == valid
    if (store / "fuzz-imported").exists():
        manager.delete("fuzz-imported")
    assert {entry: tree_digest(store / entry) for entry in os.listdir(store)} == before
    return valid


def _cleanup(store: Path, *names: str) -> None:
    for name in names:
        if os.path.lexists(store / name):
            shutil.rmtree(store / name)


@FUZZ
@given(changes=config_changes, drop=st.lists(st.sampled_from(CONFIG_FIELDS), max_size=2))
def test_fuzzed_configs(store, outside, changes, drop):
    folder = clone_adapter(store, "good", "fuzz")
    try:
        config = json.loads((folder / CONFIG).read_text())
        for field in drop:
            config.pop(field, None)
        config.update(changes)
        (folder / CONFIG).write_text(json.dumps(config))
        _exercise(AdapterManager(store), "fuzz", outside)
        (folder / META).unlink()  # metadata derived from the config alone
        _exercise(AdapterManager(store), "fuzz", outside)
    finally:
        _cleanup(store, "fuzz")


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "F33", "f32", "", "F4"]
dims = st.one_of(st.integers(-2, 40), st.integers(min_value=2**60, max_value=2**70), scalars)
entries = st.one_of(
    st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(DTYPES), scalars),
                           "shape": st.one_of(st.lists(dims, max_size=3), json_values),
                           "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-4, 600), scalars), max_size=3), json_values)}),
    json_values,
)
names = st.one_of(st.sampled_from(["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                                   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "__metadata__"]),
                  st.text(max_size=10))


@st.composite
def weights_files(draw) -> bytes:
    """A whole random header, a real header with one field of one tensor replaced, or random bytes."""
    kind = draw(st.sampled_from(["random header", "mutated header", "bytes", "length prefix"]))
    if kind == "random header":
        return safetensors_bytes(draw(st.dictionaries(names, entries, max_size=4)), draw(st.binary(max_size=600)))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "length prefix":
        body = draw(st.binary(max_size=200))
        return draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little") + body
    header, data = _good_weights()
    tensor = draw(st.sampled_from(sorted(header)))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "whole entry", "extra field"]))
    if field == "whole entry":
        header[tensor] = draw(json_values)
    elif field == "extra field":
        header[tensor]["x"] = draw(json_values)
    else:
        header[tensor][field] = draw(st.one_of(json_values, st.lists(dims, max_size=3)))
    cut = draw(st.integers(-40, 40))
    data = data[:cut] if cut < 0 else data + bytes(cut)
    return safetensors_bytes(header, data)


def _good_weights():
    header, data = read_header(_GOOD_WEIGHTS["path"])
    header.pop("__metadata__", None)
    return header, data


@FUZZ
@given(blob=weights_files())
def test_fuzzed_safetensors(store, outside, blob):
    from safetensors.torch import load_file

    folder = clone_adapter(store, "good", "fuzz")
    try:
        (folder / WEIGHTS).write_bytes(blob)
        if _exercise(AdapterManager(store), "fuzz", outside):
            load_file(str(folder / WEIGHTS))  # what the store accepts, safetensors loads
    finally:
        _cleanup(store, "fuzz")


adapter_names = st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", fullmatch=True),
                          st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}[\n\t\r\x00/\\ ]", fullmatch=True),
                          st.integers(), st.none(), st.binary(max_size=8))


@FUZZ
@given(name=adapter_names)
def test_fuzzed_names(store, outside, name):
    manager = AdapterManager(store)
    before = {entry: tree_digest(store / entry) for entry in GOOD}
    valid = isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None
    try:
        meta = manager.import_peft(store / "other", name)
        assert valid and meta.name == name and (store / name).is_dir() and not (store / name).is_symlink()
        assert manager.validate(name)[0].name == name
        manager.export(name, outside / "named", overwrite=True)
        manager.delete(name)
    except InvalidAdapterNameError:
        assert not valid
    except AdapterError:
        assert valid and name in GOOD  # exists already
    for call in (lambda: manager.validate(name), lambda: AdapterMetadata(name=name, rank=2, alpha=4),
                 lambda: manager.export(name, outside / "named", overwrite=True)):
        try:
            call()
        except InvalidAdapterNameError:
            assert not valid
        except AdapterError:
            assert valid
    assert sorted(os.listdir(store)) == sorted(GOOD)
    assert {entry: tree_digest(store / entry) for entry in GOOD} == before


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=engine_changes, blob=st.one_of(st.none(), weights_files()), name=st.one_of(st.just("fuzz"), adapter_names))
def test_fuzzed_adapters_through_the_engine(engine, store, changes, blob, name):
    baseline = engine.generate("hello", adapter="good", temperature=0, max_new_tokens=3)
    folder = clone_adapter(store, "good", "fuzz")
    try:
        config = json.loads((folder / CONFIG).read_text())
        config.update(changes)
        (folder / CONFIG).write_text(json.dumps(config))
        if blob is not None:
            (folder / WEIGHTS).write_bytes(blob)
        before = tree_digest(store)
        try:
            engine.load_adapter(name)
        except AdaptrixError as exc:
            assert isinstance(exc, AdapterError), exc
        assert tree_digest(store) == before
        assert engine.generate("hello", adapter="good", temperature=0, max_new_tokens=3) == baseline
        rows = {row["name"]: row for row in engine.list_adapters()}
        assert all(rows[good]["problem"] is None for good in GOOD)
    finally:
        if "fuzz" in engine.loaded_adapters():
            engine.unload_adapter("fuzz")
        _cleanup(store, "fuzz")
