"""Every request through the engine — library, CLI, server — and every adapter event lands in the request log."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.cli import cli
from adaptrix_core.errors import InvalidGenerationParameterError
from adaptrix_core.monitoring.store import MonitoringStore

SHORT = {"max_new_tokens": 3, "temperature": 0}


def _rows(path):
    store = MonitoringStore.open(path)
    try:
        return store.requests(), store.events()
    finally:
        store.connection.close()


def test_library_requests_and_adapter_events_are_logged(tiny_model_dir, tmp_path, single_torch_thread):
    log = tmp_path / "log.sqlite"
    config = {"monitoring": {"path": str(log)}, "adapters": {"directory": str(tmp_path / "store"), "cache_size": 1}}
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", config=config) as engine:
        for name in ("a", "b"):
            engine.create_adapter(name, layers="all", rank=2)
            engine.save_adapter(name)
            engine.unload_adapter(name)
        engine.query("hello", adapter="a", **SHORT)
        engine.chat([{"role": "user", "content": "hi"}], **SHORT)
        engine.generate_batch(["one", "two"], adapters=["b", None], **SHORT)  # loading b evicts a
        assert "".join(engine.stream("hey", **SHORT)) is not None
        with pytest.raises(InvalidGenerationParameterError):
            engine.query("hello", max_new_tokens=-1)
        engine.monitor.log.flush()
        requests, events = _rows(log)
    assert [row["source"] for row in requests] == ["library"] * 6
    assert [row["adapters"] for row in requests[:4]] == [["a"], [], ["b"], []]
    assert requests[0]["prompt"] is None  # prompts are not stored by default
    assert requests[-1]["error_type"] == "InvalidGenerationParameterError"
    assert all(row["latency_ms"] > 0 for row in requests) and requests[4]["ttft_ms"] is not None
    kinds = [(event["kind"], event["adapter"]) for event in events]
    assert ("unload", "a") in kinds and ("load", "a") in kinds and ("evict", "a") in kinds and ("load", "b") in kinds


def test_cli_requests_are_logged_as_cli(tiny_model_dir, tmp_path, monkeypatch):
    log = tmp_path / "log.sqlite"
    monkeypatch.setenv("ADAPTRIX_MONITORING__PATH", str(log))
    result = CliRunner().invoke(cli, ["query", "hello", "--model", str(tiny_model_dir("llama")), "--device", "cpu",
                                      "--max-new-tokens", "2", "--temperature", "0", "--adapters-dir",
                                      str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    stats = CliRunner().invoke(cli, ["stats", "--json"])
    assert stats.exit_code == 0, stats.output
    requests, _ = _rows(log)
    assert [row["source"] for row in requests] == ["cli"]
    assert json.loads(stats.stdout)["count"] == 1
