"""The adapter store under attack: exports aimed at the store, malformed safetensors headers, configs of
the wrong types, broken and linked store entries, bad names. Each refusal is a typed error, leaves every
file byte for byte as it was, and the good adapters keep listing and loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from adapter_helpers import (
    CONFIG,
    GOOD,
    META,
    WEIGHTS,
    clone_adapter,
    copy_good,
    edit_json,
    make_seed_store,
    safetensors_bytes,
    tree_digest,
)
from click.testing import CliRunner

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.metadata import AdapterMetadata
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.cli import cli
from adaptrix_core.errors import (
    AdapterConfigError,
    AdapterCorruptError,
    AdapterError,
    AdapterExistsError,
    AdapterExportError,
    AdapterIntegrityError,
    AdapterMetadataError,
    AdapterNotFoundError,
    AdapterStoreError,
    InvalidAdapterNameError,
)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory, single_torch_thread):
    """A tiny llama engine whose store holds the two good adapters; tests add broken entries and remove them."""
    store = tmp_path_factory.mktemp("engine-store") / "adapters"
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store)) as engine:
        engine.initialize()
        make_seed_store(engine, store)
        for name in GOOD:
            engine.unload_adapter(name)
        yield engine


@pytest.fixture
def seed(engine) -> Path:
    return Path(engine.config.adapters.directory)


@pytest.fixture
def store(seed, tmp_path) -> Path:
    """A fresh store (under tmp_path/adapters) holding copies of the good adapters."""
    copy_good(seed, tmp_path / "adapters")
    return tmp_path / "adapters"


@pytest.fixture
def engine_store(engine, seed):
    """The engine's own store; entries a test adds are removed afterwards, the good ones must be unchanged."""
    before = {name: tree_digest(seed / name) for name in GOOD}
    yield seed
    for entry in os.listdir(seed):
        path = seed / entry
        if entry not in GOOD:
            path.unlink() if path.is_symlink() or not path.is_dir() else shutil.rmtree(path)
    for name in list(engine.loaded_adapters()):
        engine.unload_adapter(name)
    assert {name: tree_digest(seed / name) for name in GOOD} == before


def assert_good_listed(manager: AdapterManager) -> dict:
    rows = {row.name: row for row in manager.list()}
    for name in GOOD:
        assert rows[name].problem is None and rows[name].metadata.name == name
    return rows


# -- 1. export never touches the store ----------------------------------------------------------------

def _refusals(store: Path, tmp_path: Path) -> dict[str, Path]:
    links = tmp_path / "links"
    links.mkdir()
    for name, target in {"to-own": store / "good", "to-store": store, "to-parent": tmp_path, "to-new-in-store": store / "fresh",
                         "to-other": store / "other"}.items():
        (links / name).symlink_to(target)
    return {
        "own folder": store / "good",
        "own folder, trailing dot-dot path": store / "other" / ".." / "good",
        "another adapter": store / "other",
        "the store": store,
        "new folder inside the store": store / "fresh",
        "nested inside the store": store / "deep" / "er",
        "inside the adapter's folder": store / "good" / "sub",
        "folder containing the store": tmp_path,
        "filesystem root": Path("/"),
        "symlink to own folder": links / "to-own",
        "symlink to the store": links / "to-store",
        "symlink to a folder containing the store": links / "to-parent",
        "dangling symlink into the store": links / "to-new-in-store",
        "path through a symlinked store": links / "to-store" / "fresh",
        "symlink to another adapter": links / "to-other",
    }


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_refuses_every_destination_that_touches_the_store(store, tmp_path, overwrite):
    manager = AdapterManager(store)
    before = tree_digest(tmp_path)
    for case, destination in _refusals(store, tmp_path).items():
        before = tree_digest(tmp_path)
        with pytest.raises(AdapterExportError, match="Cannot export 'good' to") as caught:
            manager.export("good", destination, overwrite=overwrite)
        assert str(destination) in str(caught.value), case
        assert tree_digest(tmp_path) == before, case
        assert not (store / "fresh").exists() and not (store / "deep").exists(), case
    assert_good_listed(manager)


def test_export_refuses_the_store_reached_through_a_symlinked_store_path(store, tmp_path):
    link = tmp_path / "store-link"
    link.symlink_to(store)
    manager = AdapterManager(link)  # the store opened through a link, the destination named by its real path
    before = tree_digest(store)
    for destination in (store / "good", store, store / "new", tmp_path):
        with pytest.raises(AdapterExportError):
            manager.export("good", destination, overwrite=True)
    assert tree_digest(store) == before


def test_export_to_a_bind_mounted_store_is_refused_by_inode(store, tmp_path):
    """A second path to the store that no symlink resolution can see (a bind mount) is caught by inode."""
    mount = tmp_path / "mount"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(mount)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts are not available here")
    try:
        before = tree_digest(store)
        for destination in (mount, mount / "good", mount / "new"):
            with pytest.raises(AdapterExportError):
                AdapterManager(store).export("good", destination, overwrite=True)
        assert tree_digest(store) == before
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_export_overwrites_only_an_adapter_folder_and_swaps_atomically(store, tmp_path):
    manager = AdapterManager(store)
    out = tmp_path / "out" / "exported"
    manager.export("other", out)
    with pytest.raises(AdapterExistsError, match="overwrite=True"):
        manager.export("good", out)
    assert json.loads((out / META).read_text())["name"] == "other"
    assert manager.export("good", out, overwrite=True) == out
    assert json.loads((out / META).read_text())["name"] == "good"
    assert (out / WEIGHTS).read_bytes() == (store / "good" / WEIGHTS).read_bytes()
    assert sorted(os.listdir(out.parent)) == ["exported"]  # no staging or retired folders left behind
    # A symlink to an exported folder outside the store: the folder it names is replaced, the link kept.
    link = tmp_path / "link-to-export"
    link.symlink_to(out)
    manager.export("other", link, overwrite=True)
    assert link.is_symlink() and json.loads((out / META).read_text())["name"] == "other"
    # Folders holding anything else, and files, are never replaced.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / CONFIG).write_text("{}")
    a_file = tmp_path / "a-file"
    a_file.write_text("data")
    for destination in (precious, a_file):
        before = tree_digest(destination)
        with pytest.raises(AdapterExportError):
            manager.export("good", destination, overwrite=True)
        assert tree_digest(destination) == before
    assert_good_listed(manager)


def test_failed_export_leaves_the_old_destination_as_it_was(store, tmp_path, monkeypatch):
    import adaptrix_core.adapters.export as export_module

    manager = AdapterManager(store)
    out = tmp_path / "exported"
    manager.export("other", out)
    before, store_before = tree_digest(out), tree_digest(store)
    real_copy, real_replace = shutil.copyfile, os.replace

    def failing_copy(src, dst, *args, **kwargs):
        if Path(src).name == WEIGHTS:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *args, **kwargs)

    def corrupting_copy(src, dst, *args, **kwargs):
        result = real_copy(src, dst, *args, **kwargs)
        if Path(src).name == WEIGHTS:
            Path(dst).write_bytes(Path(dst).read_bytes()[:-1] + b"\x01")
        return result

    calls = []

    def failing_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    for patch, error in ((("shutil.copyfile", failing_copy), AdapterStoreError),
                         (("shutil.copyfile", corrupting_copy), AdapterIntegrityError),
                         (("os.replace", failing_second_rename), AdapterStoreError)):
        target, replacement = patch
        module, attribute = target.split(".")
        with monkeypatch.context() as patched:
            patched.setattr(getattr(export_module, module), attribute, replacement)
            with pytest.raises(error):
                manager.export("good", out, overwrite=True)
        assert tree_digest(out) == before
        assert sorted(os.listdir(tmp_path)) == ["adapters", "exported"]  # no temporary folders left
    assert len(calls) == 3  # the rename back restored the old folder
    assert tree_digest(store) == store_before


# -- 2. safetensors headers -----------------------------------------------------------------------------

ENTRY = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
LORA_A, LORA_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _with(**fields) -> dict:
    return {LORA_A: {**ENTRY, **fields}, LORA_B: {**ENTRY, "data_offsets": [16, 32]}}


BAD_WEIGHTS = {
    "empty file": b"",
    "shorter than the length prefix": b"\x05\x00\x00",
    "header length zero": safetensors_bytes(None, raw_header=b""),
    "header length past the end": (10**6).to_bytes(8, "little") + b"{}",
    "header length 2**64-1": b"\xff" * 8 + b"{}",
    "not JSON": safetensors_bytes(None, raw_header=b"{not json}"),
    "not UTF-8": safetensors_bytes(None, raw_header=b'{"\xff": 1}'),
    "JSON list": safetensors_bytes([1, 2]),
    "JSON string": safetensors_bytes("header"),
    "leading space": safetensors_bytes(None, raw_header=b' {}'),
    "nested 100000 deep": safetensors_bytes(None, raw_header=b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "NaN": safetensors_bytes(None, raw_header=b'{"a": NaN}'),
    "5000-digit number": safetensors_bytes(None, raw_header=b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}'),
    "duplicate key": safetensors_bytes(None, raw_header=json.dumps(_with()).encode()[:-1] + b', "' + LORA_A.encode() + b'": {}}', data=bytes(32)),
    "lone surrogate in a name": safetensors_bytes(None, raw_header=b'{"\\ud800": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'),
    "entry is a list": safetensors_bytes({LORA_A: [1]}),
    "entry is null": safetensors_bytes({LORA_A: None}),
    "entry is a string": safetensors_bytes({LORA_A: "F32"}),
    "entry lacks dtype": safetensors_bytes({LORA_A: {"shape": [0], "data_offsets": [0, 0]}}),
    "entry has an unknown field": safetensors_bytes({LORA_A: {**ENTRY, "offset": 3}}, bytes(16)),
    "dtype unknown": safetensors_bytes(_with(dtype="F33"), bytes(32)),
    "dtype lowercase": safetensors_bytes(_with(dtype="f32"), bytes(32)),
    "dtype a number": safetensors_bytes(_with(dtype=4), bytes(32)),
    "shape a string": safetensors_bytes(_with(shape="2,2"), bytes(32)),
    "shape of floats": safetensors_bytes(_with(shape=[2.0, 2.0]), bytes(32)),
    "shape of bools": safetensors_bytes(_with(shape=[True, 4]), bytes(32)),
    "shape negative": safetensors_bytes(_with(shape=[-2, -2]), bytes(32)),
    "shape of strings": safetensors_bytes(_with(shape=["2", "2"]), bytes(32)),
    "shape nested": safetensors_bytes(_with(shape=[[2], [2]]), bytes(32)),
    "shape huge": safetensors_bytes(_with(shape=[2**70, 0]), bytes(32)),
    "shape overflows u64 before a zero": safetensors_bytes(_with(shape=[2**40, 2**40, 0], data_offsets=[0, 0]), bytes(16)),
    "offsets floats": safetensors_bytes(_with(data_offsets=[0.0, 16.0]), bytes(32)),
    "offsets bools": safetensors_bytes(_with(data_offsets=[False, True]), bytes(32)),
    "offsets strings": safetensors_bytes(_with(data_offsets=["0", "16"]), bytes(32)),
    "offsets negative": safetensors_bytes(_with(data_offsets=[-16, 0]), bytes(32)),
    "offsets huge": safetensors_bytes(_with(data_offsets=[0, 2**80]), bytes(32)),
    "three offsets": safetensors_bytes(_with(data_offsets=[0, 8, 16]), bytes(32)),
    "offsets an object": safetensors_bytes(_with(data_offsets={"start": 0}), bytes(32)),
    "offsets reversed": safetensors_bytes(_with(data_offsets=[16, 0]), bytes(32)),
    "span differs from shape": safetensors_bytes(_with(data_offsets=[0, 12]), bytes(32)),
    "outside the file": safetensors_bytes(_with(), bytes(20)),
    "overlapping tensors": safetensors_bytes({LORA_A: ENTRY, LORA_B: {**ENTRY, "data_offsets": [8, 24]}}, bytes(24)),
    "gap between tensors": safetensors_bytes({LORA_A: ENTRY, LORA_B: {**ENTRY, "data_offsets": [20, 36]}}, bytes(36)),
    "bytes after the last tensor": safetensors_bytes(_with(), bytes(40)),
    "metadata a list": safetensors_bytes({"__metadata__": ["format"], **_with()}, bytes(32)),
    "metadata values not strings": safetensors_bytes({"__metadata__": {"format": 1}, **_with()}, bytes(32)),
    "LoRA weight of integers": safetensors_bytes(_with(dtype="I32"), bytes(32)),
    "LoRA weight a vector": safetensors_bytes(_with(shape=[4]), bytes(32)),
    "lora_A without lora_B": safetensors_bytes({LORA_A: ENTRY}, bytes(16)),
    "ranks disagree": safetensors_bytes({LORA_A: {**ENTRY, "shape": [4, 1]}, LORA_B: {**ENTRY, "data_offsets": [16, 32]}}, bytes(32)),
    "no LoRA tensors": safetensors_bytes({"x": ENTRY}, bytes(16)),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_malformed_safetensors_are_typed_errors_on_validate_and_import(store, tmp_path, case):
    manager = AdapterManager(store)
    folder = clone_adapter(store, "good", "broken")
    (folder / WEIGHTS).write_bytes(BAD_WEIGHTS[case])
    before = tree_digest(tmp_path)
    with pytest.raises(AdapterCorruptError):
        manager.validate("broken")
    with pytest.raises(AdapterCorruptError):
        manager.import_peft(folder, "imported")
    with pytest.raises(AdapterCorruptError):
        manager.export("broken", tmp_path / "out")
    rows = assert_good_listed(manager)
    assert rows["broken"].problem and rows["broken"].metadata is None
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("case", ["header length past the end", "offsets floats", "nested 100000 deep", "dtype unknown",
                                  "overlapping tensors", "lone surrogate in a name", "shape overflows u64 before a zero"])
def test_malformed_safetensors_never_reach_the_model(engine, engine_store, case):
    folder = clone_adapter(engine_store, "good", "broken")
    (folder / WEIGHTS).write_bytes(BAD_WEIGHTS[case])
    before = tree_digest(engine_store)
    baseline = engine.generate("hello", adapter="good", temperature=0, max_new_tokens=4)
    with pytest.raises(AdapterCorruptError):
        engine.load_adapter("broken")
    assert "broken" not in engine.loaded_adapters()
    assert engine.generate("hello", adapter="good", temperature=0, max_new_tokens=4) == baseline
    assert tree_digest(engine_store) == before


def test_headers_written_by_safetensors_pass(seed, tmp_path):
    """Every dtype safetensors.torch writes is read back, with __metadata__, zero-size and reordered tensors."""
    import torch
    from safetensors.torch import save_file

    from adaptrix_core.adapters.safetensors_header import read_safetensors_header

    tensors = {"z": torch.zeros(0, 3), "a": torch.ones(3, 2, dtype=torch.bfloat16), "b": torch.ones(5, dtype=torch.int64),
               "c": torch.ones(2, 2, dtype=torch.float16), "d": torch.ones(1, dtype=torch.bool), "e": torch.ones(4, dtype=torch.uint8)}
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    header = read_safetensors_header(tmp_path / "t.safetensors")
    assert sorted(header) == sorted(tensors) and header["a"]["dtype"] == "BF16"
    assert read_safetensors_header(seed / "good" / WEIGHTS)


# -- 3. adapter_config.json schema ----------------------------------------------------------------------

BAD_CONFIGS = [
    ("r", "16"), ("r", 0), ("r", -4), ("r", True), ("r", 4.0), ("r", None), ("r", [4]),
    ("lora_alpha", "32"), ("lora_alpha", True), ("lora_alpha", None), ("lora_alpha", {"a": 1}),
    ("target_modules", 5), ("target_modules", [5]), ("target_modules", [""]), ("target_modules", "(unclosed"),
    ("target_modules", {"q_proj": True}), ("target_modules", [["q_proj"]]),
    ("layers_to_transform", "0,1"), ("layers_to_transform", [0, -1]), ("layers_to_transform", [0.0]),
    ("layers_to_transform", [True]), ("layers_to_transform", {"0": 1}),
    ("layers_pattern", 3), ("layers_pattern", ["layers", None]),
    ("rank_pattern", [4]), ("rank_pattern", {"q_proj": "4"}), ("rank_pattern", {"q_proj": 0}), ("rank_pattern", {"[": 4}),
    ("alpha_pattern", "x"), ("alpha_pattern", {"q_proj": None}), ("alpha_pattern", {"q_proj": False}),
    ("lora_dropout", "0.1"), ("lora_dropout", 1.5), ("lora_dropout", -0.1), ("lora_dropout", None),
    ("bias", "some"), ("bias", None), ("bias", 0),
    ("fan_in_fan_out", "false"), ("fan_in_fan_out", 0), ("use_rslora", "no"), ("use_rslora", 1), ("use_dora", None),
    ("use_dora", "true"), ("init_lora_weights", "pissa"), ("init_lora_weights", "olora"), ("init_lora_weights", 1),
    ("init_lora_weights", None), ("task_type", "CHAT"), ("task_type", 3), ("base_model_name_or_path", 7),
    ("base_model_name_or_path", ["a"]), ("peft_type", 5), ("peft_type", None), ("peft_type", ["LORA"]),
    ("inference_mode", "yes"), ("modules_to_save", "lm_head"), ("layer_replication", [[0, 1]]),
    ("kasa_config", {}), ("alora_invocation_tokens", [1, 2]), ("revision", 3), ("megatron_config", {"tp": 2}),
    ("rank_pattern", None), ("alpha_pattern", None), ("trainable_token_indices", [5]), ("trainable_token_indices", []),
    ("modules_to_save", ["lm_head"]),
]


@pytest.mark.parametrize("field, value", BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v in BAD_CONFIGS])
def test_config_values_of_the_wrong_type_are_refused_by_field(store, tmp_path, field, value):
    manager = AdapterManager(store)
    folder = clone_adapter(store, "good", "broken")
    edit_json(folder / CONFIG, **{field: value})
    (folder / META).unlink()  # metadata() then derives from the config too
    before = tree_digest(tmp_path)
    for attempt in (lambda: manager.validate("broken"), lambda: manager.metadata("broken"),
                    lambda: manager.import_peft(folder, "imported")):
        with pytest.raises(AdapterConfigError, match=rf"^adapter_config\.json: {field}\b"):
            attempt()
    assert_good_listed(manager)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("changes, field", [
    ({"target_modules": "q_proj", "layers_pattern": None}, "layers_to_transform"),
    ({"layers_to_transform": None}, "layers_pattern"),
    ({"use_dora": True, "lora_bias": True}, "lora_bias"),
    ({"rank_pattern": {"q_proj": 8}}, None),  # the weights say rank 4
])
def test_config_combinations_peft_refuses(store, changes, field):
    folder = clone_adapter(store, "good", "broken")
    edit_json(folder / CONFIG, **changes)
    with pytest.raises(AdapterCorruptError, match=rf"adapter_config\.json: {field}\b" if field else "rank_pattern says 8"):
        AdapterManager(store).validate("broken")


def test_configs_from_other_peft_versions_still_load(engine, engine_store):
    folder = clone_adapter(engine_store, "good", "newer")
    edit_json(folder / CONFIG, some_future_field={"x": [1]}, another=None, rank_pattern={"v_proj": 4}, lora_alpha=16.5)
    assert engine.load_adapter("newer").name == "newer"


@pytest.mark.parametrize("field, value", [("r", "4"), ("target_modules", 7), ("lora_dropout", 3), ("init_lora_weights", "pissa"),
                                          ("rank_pattern", None), ("trainable_token_indices", [5]), ("modules_to_save", ["lm_head"])])
def test_bad_configs_never_reach_peft(engine, engine_store, field, value):
    """Each of these made peft raise a raw error (or, for trainable tokens, left a wrapper in the shared
    model that broke every later load); the schema refuses them before peft sees them."""
    folder = clone_adapter(engine_store, "good", "broken")
    edit_json(folder / CONFIG, **{field: value})
    with pytest.raises(AdapterConfigError, match=f"adapter_config.json: {field}: "):
        engine.load_adapter("broken")
    assert "broken" not in engine.loaded_adapters()
    clone_adapter(engine_store, "good", "after")
    assert engine.load_adapter("after").name == "after"  # the model is still fit to load adapters


# -- 4. one broken entry never breaks a listing ---------------------------------------------------------

def _break_store(store: Path, outside: Path) -> dict[str, str]:
    """Every kind of broken entry next to the good adapters; returns name -> expected problem text."""
    expected = {}

    def clone(name: str) -> Path:
        return clone_adapter(store, "good", name)

    (clone("meta-not-json") / META).write_text("{")
    expected["meta-not-json"] = "not valid JSON"
    edit_json(clone("meta-types") / META, rank="sixteen", routing={"keywords": "dates"}, target_layers="all")
    expected["meta-types"] = "rank"
    edit_json(clone("meta-name-type") / META, name=5)
    expected["meta-name-type"] = "Invalid adapter name"
    edit_json(clone("meta-other-name") / META, name="good")
    expected["meta-other-name"] = "holds metadata for an adapter named 'good'"
    (clone("meta-is-a-list") / META).write_text("[1, 2]")
    expected["meta-is-a-list"] = "must be a JSON object"
    (clone("meta-folder") / META).unlink()
    (store / "meta-folder" / META).mkdir()
    expected["meta-folder"] = "not a regular file"
    (clone("meta-fifo") / META).unlink()
    os.mkfifo(store / "meta-fifo" / META)
    expected["meta-fifo"] = "not a regular file"
    edit_json(clone("config-types") / CONFIG, target_modules=3)
    expected["config-types"] = "adapter_config.json: target_modules"
    (clone("config-missing") / CONFIG).unlink()
    expected["config-missing"] = "missing"
    (clone("header") / WEIGHTS).write_bytes(BAD_WEIGHTS["offsets floats"])
    expected["header"] = "data_offsets"
    (clone("weights-missing") / WEIGHTS).rename(store / "weights-missing" / "adapter_model.bin")
    expected["weights-missing"] = "pickle files are never read"
    tampered = store / "tampered"
    shutil.copytree(store / "other", tampered)
    edit_json(tampered / META, name="tampered")
    blob = bytearray((tampered / WEIGHTS).read_bytes())
    blob[-1] ^= 0xFF
    (tampered / WEIGHTS).write_bytes(bytes(blob))
    expected["tampered"] = "sha256"
    (store / "empty").mkdir()
    expected["empty"] = "missing"
    (store / "stray-file.txt").write_text("notes")
    expected["stray-file.txt"] = "is not a folder"
    (store / "link-to-good").symlink_to(store / "good")
    (store / "link-outside").symlink_to(outside)
    (store / "dangling").symlink_to(store / "nowhere")
    (store / "loop").symlink_to(store / "loop")
    for name in ("link-to-good", "link-outside", "dangling", "loop"):
        expected[name] = "is a symbolic link; adapters must be real folders"
    shutil.copytree(store / "other", store / "bad name")
    shutil.copytree(store / "other", store / "new\nline")
    expected["bad name"] = expected["new\nline"] = "Invalid adapter name"
    return expected


def test_every_kind_of_broken_entry_is_listed_with_its_problem(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    expected = _break_store(store, outside)
    before = tree_digest(tmp_path)
    manager = AdapterManager(store)
    rows = assert_good_listed(manager)
    assert set(rows) == set(expected) | set(GOOD)
    for name, text in expected.items():
        assert rows[name].metadata is None and text in rows[name].problem, (name, rows[name].problem)
        with pytest.raises(AdapterError):
            manager.validate(name)
    assert tree_digest(tmp_path) == before


def test_broken_entries_in_engine_and_cli_listings(engine, engine_store, tmp_path, monkeypatch):
    expected = _break_store(engine_store, tmp_path)
    trap = clone_adapter(engine_store, "good", "markup")  # a valid adapter whose description rich would choke on
    edit_json(trap / META, description="[/] a [bold]markup[/bold] trap",
              performance_metrics={"metric": "exact_match", "exact_match": "high", "base_exact_match": None})
    edit_json(clone_adapter(engine_store, "good", "metric-list") / META, performance_metrics={"metric": ["exact_match"]})
    valid = {*GOOD, "markup", "metric-list"}
    rows = {row["name"]: row for row in engine.list_adapters()}
    assert set(rows) == set(expected) | valid
    assert all(rows[name]["problem"] for name in expected) and not any(rows[name]["problem"] for name in valid)
    for name in expected:
        with pytest.raises(AdapterError):
            engine.load_adapter(name)
    assert engine.load_adapter("markup").name == "markup"
    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    common = ["--model", engine.model_id, "--device", "cpu", "--adapters-dir", str(engine_store)]
    listing = CliRunner().invoke(cli, ["list", "--json", *common])
    assert listing.exit_code == 0, listing.output
    json_rows = {row["name"]: row for row in json.loads(listing.stdout)["adapters"]}
    assert set(json_rows) == set(rows) and not any(json_rows[name]["problem"] for name in valid)
    table = CliRunner().invoke(cli, ["list", *common])
    assert table.exit_code == 0, table.output
    assert "[/] a [bold]markup[/bold] trap" in table.output and "'new\\nline'" in table.output
    for extra in ([], ["--files-only"]):
        checked = CliRunner().invoke(cli, ["adapters", "validate", "--json", *extra, *common])
        assert checked.exit_code == 1
        verdicts = json.loads(checked.stdout)["adapters"]
        assert all(verdicts[name]["valid"] for name in valid), verdicts
        assert all(not verdicts[name]["valid"] and verdicts[name]["problem"] for name in expected)
    text = CliRunner().invoke(cli, ["adapters", "validate", "--files-only", *common])
    assert text.exit_code == 1 and "good: ok" in text.output and "stray-file.txt: AdapterCorruptError" in text.output


def test_permission_errors_are_listed_not_raised(seed, tmp_path):
    """Unreadable adapter folders and files, listed by a process that file permissions apply to (root
    bypasses them, so as root the listing runs without the capabilities that let it)."""
    store = tmp_path / "adapters"
    copy_good(seed, store)
    clone_adapter(store, "good", "locked-folder").chmod(0)
    (clone_adapter(store, "good", "locked-meta") / META).chmod(0)
    (clone_adapter(store, "good", "locked-weights") / WEIGHTS).chmod(0)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be made to apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    script = ("import json, sys; from adaptrix_core.adapters.store import AdapterManager\n"
              "print(json.dumps({r.name: r.problem for r in AdapterManager(sys.argv[1]).list()}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", script, str(store)], capture_output=True, text=True, env=env)
    finally:
        (store / "locked-folder").chmod(0o755)
    assert done.returncode == 0, done.stderr
    problems = json.loads(done.stdout)
    assert problems["good"] is None and problems["other"] is None
    for name in ("locked-folder", "locked-meta", "locked-weights"):
        assert "Permission denied" in problems[name], problems


# -- 5. names and linked entries ------------------------------------------------------------------------

BAD_NAMES = ["good\n", "\ngood", "go\tod", "go\x00od", "a\rb", "", " good", "good ", ".hidden", "..", ".", "../good",
             "a/b", "a\\b", "x" * 65, "naïve", "🙂", 5, None, b"good", ["good"]]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_invalid_names_are_typed_errors_everywhere(store, tmp_path, name):
    manager = AdapterManager(store)
    before = tree_digest(tmp_path)
    attempts = [
        lambda: manager.import_peft(store / "good", name),
        lambda: manager.validate(name), lambda: manager.metadata(name), lambda: manager.delete(name),
        lambda: manager.export(name, tmp_path / "out"), lambda: manager.path(name),
        lambda: AdapterMetadata(name=name, rank=4, alpha=8),
        lambda: AdapterMetadata.model_validate({"name": name, "rank": 4, "alpha": 8}),
        lambda: manager.save(store / "good", AdapterMetadata.model_construct(name=name, rank=4, alpha=8)),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidAdapterNameError, match="Invalid adapter name"):
            attempt()
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("name", ["good\n", "a\tb", "../x", 7])
def test_invalid_names_in_the_engine(engine, engine_store, name):
    for attempt in (lambda: engine.load_adapter(name), lambda: engine.create_adapter(name, rank=2)):
        with pytest.raises(InvalidAdapterNameError):
            attempt()


def test_metadata_of_the_wrong_type_is_a_typed_error(store):
    manager = AdapterManager(store)
    before = tree_digest(store)
    with pytest.raises(AdapterMetadataError, match="description"):
        manager.import_peft(store / "good", "copy", description=5)
    with pytest.raises(AdapterMetadataError, match="rank"):
        manager.update_metadata("good", rank="many")
    with pytest.raises(AdapterMetadataError, match="weights_sha256"):
        manager.update_metadata("good", weights_sha256="0" * 64)
    with pytest.raises(AdapterMetadataError, match="routing"):
        AdapterMetadata(name="ok", rank=4, alpha=8, routing={"keywords": 3})
    assert tree_digest(store) == before


def test_delete_removes_a_link_never_its_target(store, tmp_path):
    manager = AdapterManager(store)
    outside = tmp_path / "outside"
    shutil.copytree(store / "good", outside)
    (store / "stray.txt").write_text("x")
    links = {"link-good": store / "good", "link-outside": outside, "link-file": store / "good" / META,
             "dangling": tmp_path / "nowhere", "loop": store / "loop"}
    for name, target in links.items():
        (store / name).symlink_to(target)
    before = {path: tree_digest(path) for path in (store / "good", outside)}
    for name in links:
        with pytest.raises(AdapterCorruptError, match="is a symbolic link; adapters must be real folders"):
            manager.validate(name)
        with pytest.raises(AdapterCorruptError, match="symbolic link"):
            manager.export(name, tmp_path / "out")
        manager.delete(name)
        assert not os.path.lexists(store / name)
    manager.delete("stray.txt")
    assert {path: tree_digest(path) for path in before} == before
    manager.delete("other")
    assert manager.names() == ["good"] and not [p for p in os.listdir(store) if p.startswith(".")]
    with pytest.raises(AdapterNotFoundError, match="available: good"):
        manager.delete("other")


def test_saving_over_a_linked_entry_is_refused(store, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(store / "good", outside)
    (store / "linked").symlink_to(outside)
    before = tree_digest(outside)
    manager = AdapterManager(store)
    with pytest.raises(AdapterExistsError):
        manager.import_peft(store / "other", "linked")
    with pytest.raises(AdapterCorruptError, match="symbolic link"):
        manager.import_peft(store / "other", "linked", overwrite=True)
    assert tree_digest(outside) == before and (store / "linked").is_symlink()
