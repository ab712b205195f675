"""The adapter commands of the CLI on a tiny model: train, list, load/active/unload, query, import, validate."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adaptrix_core.cli import cli


@pytest.fixture
def run(tiny_model_dir, tmp_path, monkeypatch, single_torch_thread):
    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--model", str(tiny_model_dir("llama")), "--device", "cpu", "--adapters-dir", str(tmp_path / "adapters")]

    def invoke(*args: str, ok: bool = True):
        result = CliRunner().invoke(cli, [*args, *common])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "yes.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {w}", "response": "yes"}) + "\n"
                            for w in "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma".split() * 2))
    return path


def test_train_list_load_query_unload(run, data):
    trained = json.loads(run("train", "--name", "yes", "--data", str(data), "--layers", "all", "--epochs", "6",
                             "--lr", "0.02", "--eval-split", "0.25", "--keywords", "say,word", "--json").stdout)
    assert trained["name"] == "yes" and trained["performance_metrics"]["metric"] == "exact_match"
    assert trained["routing"]["keywords"] == ["say", "word"]
    listing = json.loads(run("list", "--json").stdout)
    assert [row["name"] for row in listing["adapters"]] == ["yes"] and listing["active"] == []
    assert json.loads(run("list-adapters", "--json").stdout)["adapters"][0]["rank"] == 16
    loaded = json.loads(run("load", "yes", "--json").stdout)
    assert loaded["active"] == ["yes"] and loaded["adapter_bytes"]["yes"] > 0
    assert json.loads(run("active", "--json").stdout) == {"active": ["yes"]}
    answer = json.loads(run("query", "say alpha", "--temperature", "0", "--max-new-tokens", "4", "--json").stdout)
    assert answer["adapters"] == ["yes"] and answer["text"] == "yes"
    base = json.loads(run("query", "say alpha", "--adapter", "none", "--temperature", "0", "--max-new-tokens", "4",
                          "--json").stdout)
    assert base["adapters"] == [] and base["text"] != "yes"
    assert json.loads(run("unload", "yes", "--json").stdout) == {"active": []}
    missing = run("unload", "yes", ok=False)
    assert missing.exit_code == 1 and "Not active" in missing.output
    table = run("list").output
    assert "yes" in table and "held-out" in table


def test_train_shows_progress_bar(run, data):
    result = run("train", "--name", "bar", "--data", str(data), "--epochs", "1", "--eval-split", "0")
    assert "training bar" in result.output and "saved adapter" in result.output


def test_import_validate_export(run, data, tmp_path):
    run("train", "--name", "yes", "--data", str(data), "--epochs", "1", "--eval-split", "0", "--json")
    run("adapters", "export", "yes", str(tmp_path / "exported"))
    (tmp_path / "exported" / "adaptrix.json").unlink()
    imported = json.loads(run("adapters", "import", str(tmp_path / "exported"), "--name", "copy",
                              "--description", "a copy", "--json").stdout)
    assert imported["name"] == "copy" and imported["description"] == "a copy"
    valid = json.loads(run("adapters", "validate", "--json").stdout)["adapters"]
    assert valid == {"copy": {"valid": True, "problem": None}, "yes": {"valid": True, "problem": None}}
    weights = tmp_path / "adapters" / "copy" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    broken = run("adapters", "validate", "--files-only", "--json", ok=False)
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["adapters"]["copy"]["error"] == "AdapterIntegrityError"
    run("adapters", "delete", "copy", "--yes")
    assert [row["name"] for row in json.loads(run("list", "--json").stdout)["adapters"]] == ["yes"]


def test_adapter_errors_in_the_cli(run):
    result = run("load", "nope", ok=False)
    assert result.exit_code == 1 and "No adapter named 'nope'" in result.output
    bad = run("query", "hi", "--adapter", "a=lots", ok=False)
    assert bad.exit_code == 2 and "not a number" in bad.output
