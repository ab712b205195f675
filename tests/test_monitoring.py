"""The request log (adaptrix_core.monitoring): store, writer thread, crash safety, retention, stats, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptrix_core.adapters.metadata import AdapterMetadata
from adaptrix_core.cli import cli
from adaptrix_core.config import AdaptrixConfig, MonitoringSettings, load_config
from adaptrix_core.errors import AdaptrixError, MonitoringError, OptionalDependencyError
from adaptrix_core.monitoring import RequestLog, failure_fields, request_fields
from adaptrix_core.monitoring import stats as mstats
from adaptrix_core.monitoring.benchmark import evaluation_set
from adaptrix_core.monitoring.store import BASE_LABEL, SCHEMA_VERSION, MonitoringStore

REPO = Path(__file__).resolve().parent.parent


def rows_of(path: Path) -> list[dict]:
    loaded = mstats.load(path)
    assert loaded is not None
    return loaded[0]


def new_log(path: Path, **options) -> RequestLog:
    options.setdefault("flush_interval", 3600)  # tests flush explicitly
    return RequestLog(path, **options)


# -- configuration ---------------------------------------------------------------------------------------
def test_settings_defaults_and_environment(tmp_path):
    settings = AdaptrixConfig().monitoring
    assert settings.enabled is True and settings.store_text is False
    assert settings.resolved_path("~/cache") == Path("~/cache").expanduser() / "monitoring.sqlite"
    config = load_config(environ={"ADAPTRIX_MONITORING__PATH": str(tmp_path / "log.sqlite"),
                                  "ADAPTRIX_MONITORING__STORE_TEXT": "true"})
    assert config.monitoring.resolved_path(config.cache_dir) == tmp_path / "log.sqlite"
    assert config.monitoring.store_text is True
    with pytest.raises(AdaptrixError, match="queue_size"):
        load_config(environ={"ADAPTRIX_MONITORING__QUEUE_SIZE": "0"})


# -- the store -----------------------------------------------------------------------------------------------
def test_store_schema_version_and_wal(tmp_path):
    path = tmp_path / "sub" / "log.sqlite"
    MonitoringStore.open(path).close()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(connection.execute("SELECT key, value FROM meta"))
    assert meta["application"] == "adaptrix-monitoring" and meta["schema_version"] == str(SCHEMA_VERSION)
    connection.close()
    MonitoringStore.open(path).close()  # reopening an existing log is fine


def test_foreign_and_broken_files_are_refused_and_left_alone(tmp_path):
    foreign = tmp_path / "other.sqlite"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE people (name TEXT)")
    connection.commit()
    connection.close()
    before = foreign.read_bytes()
    with pytest.raises(MonitoringError, match="not an Adaptrix request log .*people"):
        MonitoringStore.open(foreign)
    with pytest.raises(MonitoringError, match="not an Adaptrix request log"):
        mstats.load(foreign)
    assert foreign.read_bytes() == before
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just some text that is long enough " * 20)
    before = text.read_bytes()
    with pytest.raises(MonitoringError, match="not an Adaptrix request log"):
        MonitoringStore.open(text)
    assert text.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "log.sqlite"
    MonitoringStore.open(path).close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    with pytest.raises(MonitoringError, match="newer than this Adaptrix reads"):
        MonitoringStore.open(path)


# -- the recorder ----------------------------------------------------------------------------------------------
def test_rows_are_written_and_text_is_not_stored_by_default(tmp_path):
    path = tmp_path / "log.sqlite"
    log = RequestLog.from_settings(MonitoringSettings(path=str(path)), tmp_path)
    assert log.store_text is False
    assert log.record_request(source="cli", model="m", backend="hf", adapters=["a"], latency_ms=200.0,
                              completion_tokens=10, prompt="my secret", answer="its answer")
    log.record_event("load", "a", 0.25)
    assert log.flush()
    (row,) = rows_of(path)
    assert row["prompt"] is None and row["answer"] is None
    assert row["adapters"] == ["a"] and row["adapter_weights"] == {"a": 1.0} and row["adapter_label"] == "a"
    assert row["tokens_per_s"] == pytest.approx(50.0) and row["source"] == "cli"
    assert b"my secret" not in path.read_bytes() + Path(f"{path}-wal").read_bytes()
    log.close()
    (event,) = mstats.load(path)[1]
    assert (event["kind"], event["adapter"], event["seconds"]) == ("load", "a", 0.25)
    assert log.status()["written"] == 2 and log.status()["dropped"] == 0


def test_store_text_on_keeps_prompt_and_answer(tmp_path):
    path = tmp_path / "log.sqlite"
    with RequestLog.from_settings(MonitoringSettings(path=str(path), store_text=True), tmp_path) as log:
        log.record_request(source="server", prompt="question?", answer="answer.")
    (row,) = rows_of(path)
    assert (row["prompt"], row["answer"]) == ("question?", "answer.")


def test_disabled_log_records_nothing(tmp_path):
    log = RequestLog.from_settings(MonitoringSettings(enabled=False, path=str(tmp_path / "log.sqlite")), tmp_path)
    assert log.record_request(source="library", latency_ms=1.0) is False
    assert log.record_event("load", "a", 0.1) is False
    assert log.flush() is True
    log.close()
    assert not (tmp_path / "log.sqlite").exists() and log._thread is None
    assert log.status()["enabled"] is False


def test_bad_fields_are_typed_errors(tmp_path):
    log = new_log(tmp_path / "log.sqlite")
    with pytest.raises(MonitoringError, match="Unknown request field.*latency\\b"):
        log.record_request(source="library", latency=3)
    with pytest.raises(MonitoringError, match="source must be one of library, cli, server"):
        log.record_request(source="web")
    with pytest.raises(MonitoringError, match="load, unload, evict"):
        log.record_event("explode", "a", 1.0)
    log.close()


def test_bounded_queue_drops_and_counts_instead_of_blocking(tmp_path):
    path = tmp_path / "log.sqlite"
    log = new_log(path, queue_size=5, batch_size=1000)
    accepted = [log.record_request(source="library", latency_ms=float(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert log.status()["queued"] == 5 and log.status()["dropped"] == 3
    assert log.flush()
    assert [row["latency_ms"] for row in rows_of(path)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    log.close()
    assert log.record_request(source="library") is False  # after close: dropped, counted
    assert log.status()["dropped"] == 4


def test_writer_thread_batches_on_its_own(tmp_path):
    path = tmp_path / "log.sqlite"
    log = RequestLog(path, flush_interval=0.05)
    for i in range(20):
        log.record_request(source="library", latency_ms=float(i))
    deadline = time.monotonic() + 10
    while log.status()["written"] < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.status()["written"] == 20
    log.close()


def test_unwritable_path_never_reaches_the_caller(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    log = new_log(blocker / "log.sqlite")
    assert log.record_request(source="library", latency_ms=1.0)
    assert log.flush()
    status = log.status()
    assert status["failed"] == 1 and status["written"] == 0 and "Cannot open the request log" in status["last_error"]
    log.close()


def test_a_bad_value_is_skipped_by_the_writer_not_raised(tmp_path):
    path = tmp_path / "log.sqlite"
    log = new_log(path)
    assert log.record_request(source="library", latency_ms="fast")  # queued: values are converted off the hot path
    assert log.record_request(source="library", latency_ms=3.0)
    assert log.flush()
    assert [row["latency_ms"] for row in rows_of(path)] == [3.0]
    assert log.status()["failed"] == 1 and "could not be converted" in log.status()["last_error"]
    log.close()


def test_a_folder_is_not_a_log(tmp_path):
    with pytest.raises(MonitoringError, match="Cannot open the request log"):
        MonitoringStore.open(tmp_path)
    with pytest.raises(MonitoringError, match="is a folder"):
        mstats.load(tmp_path)


def test_retention_by_age_and_rows_applied_now_and_then(tmp_path):
    path = tmp_path / "log.sqlite"
    now = time.time()
    log = new_log(path, retention_days=1, retention_rows=3, retention_interval=3600)
    for age_days in (5, 3, 0.5, 0.4, 0.3, 0.2, 0.1):
        log.record_request(source="library", time=now - age_days * 86400, latency_ms=age_days)
    log.record_event("load", "a", 0.1)
    assert log.flush()  # first flush: retention runs
    assert [row["latency_ms"] for row in rows_of(path)] == [0.3, 0.2, 0.1]
    log.record_request(source="library", time=now - 10 * 86400, latency_ms=10.0)
    assert log.flush()  # within retention_interval: not applied again yet
    assert 10.0 in [row["latency_ms"] for row in rows_of(path)]
    log.close()
    store = MonitoringStore.open(path)
    assert store.apply_retention(1, None) == 1
    store.close()


def test_committed_rows_survive_sigkill(tmp_path):
    path = tmp_path / "log.sqlite"
    script = f"""
import sys, time
from adaptrix_core.monitoring import RequestLog
log = RequestLog({str(path)!r}, flush_interval=3600)
for i in range(50):
    log.record_request(source="library", model="committed", latency_ms=float(i))
assert log.flush()
for i in range(5):
    log.record_request(source="library", model="queued-only")
print("committed", flush=True)
time.sleep(120)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # the rows live in the WAL: never checkpointed, no clean close
    rows = rows_of(path)
    assert [row["model"] for row in rows] == ["committed"] * 50
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


# -- stats ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800),
                                           ("1h30m", 5400), ("1.5h", 5400), ("45s", 45), (" 2H ", 7200)])
def test_parse_since(text, seconds):
    assert mstats.parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5", "5x", "1h-2m", "0m", "-1h", "1 hour"])
def test_parse_since_refuses(text):
    with pytest.raises(MonitoringError, match="window"):
        mstats.parse_since(text)


def fill(path: Path, now: float) -> None:
    """Ten requests on adapter 'a' (latency 10..100 ms), three routed by 'keyword', two on the base model
    (one failed), one on a mix, and adapter events."""
    with new_log(path) as log:
        for i in range(10):
            routed = {"router": "keyword", "routed": {"a": 1.0}, "route_confidence": 0.5 + i / 100} if i < 3 else {}
            log.record_request(source="library", time=now - 60 * (10 - i), adapters=["a"], latency_ms=10.0 * (i + 1),
                               ttft_ms=float(i + 1), completion_tokens=10, **routed)
        log.record_request(source="cli", time=now - 7200, latency_ms=400.0, completion_tokens=20, ttft_ms=50.0)
        log.record_request(source="cli", time=now - 30, latency_ms=5.0, error_type="ContextOverflowError")
        log.record_request(source="server", time=now - 30, adapter_weights={"a": 0.7, "b": 0.3}, latency_ms=80.0,
                           completion_tokens=8, router="keyword", routed={"a": 0.7, "b": 0.3}, route_confidence=0.9)
        for seconds in (0.1, 0.3, 0.2):
            log.record_event("load", "a", seconds)
        log.record_event("evict", "b", None)


def test_stats_math_against_hand_computed_values(tmp_path):
    path = tmp_path / "log.sqlite"
    now = time.time()
    fill(path, now)
    rows, events, _ = mstats.load(path)
    summary = mstats.summarize(rows, events)
    assert (summary["count"], summary["errors"]) == (13, 1)
    groups = {group["adapter"]: group for group in summary["by_adapter"]}
    assert set(groups) == {"a", BASE_LABEL, "mix(a=0.7,b=0.3)"}
    a = groups["a"]
    # latencies 10..100: nearest rank p50 = 5th smallest, p95 = ceil(9.5) = 10th smallest
    assert a["latency_ms"] == {"p50": 50.0, "p95": 100.0} and a["ttft_ms"] == {"p50": 5.0, "p95": 10.0}
    rates = sorted(10 / (10 * (i + 1) / 1000) for i in range(10))  # 1000/(i+1) tokens/s
    assert a["tokens_per_s"]["p50"] == pytest.approx(rates[4])
    assert a["tokens_per_s"]["mean"] == pytest.approx(sum(rates) / 10)
    assert (a["count"], a["errors"], a["completion_tokens"]) == (10, 0, 100)
    base = groups[BASE_LABEL]
    assert (base["count"], base["errors"], base["error_rate"]) == (2, 1, 0.5)
    assert base["latency_ms"] == {"p50": 400.0, "p95": 400.0}  # the failed request is not in the latency figures
    routes = {(r["router"], r["chosen"]): r for r in summary["by_route"]}
    assert set(routes) == {("keyword", "a"), ("keyword", "mix(a=0.7,b=0.3)")}
    assert routes[("keyword", "a")]["count"] == 3
    assert routes[("keyword", "a")]["confidence_mean"] == pytest.approx(0.51)
    assert routes[("keyword", "a")]["latency_ms"] == {"p50": 20.0, "p95": 30.0}
    events_by = {(e["adapter"], e["kind"]): e for e in summary["adapter_events"]}
    assert events_by[("a", "load")]["count"] == 3 and events_by[("a", "load")]["ms_p50"] == pytest.approx(200.0)
    assert events_by[("b", "evict")] == {"adapter": "b", "kind": "evict", "count": 1, "ms_p50": None, "ms_max": None}


def test_since_and_adapter_filters(tmp_path):
    path = tmp_path / "log.sqlite"
    now = time.time()
    fill(path, now)
    assert len(mstats.load(path, since="1h", now=now)[0]) == 12  # the 2-hour-old request is out
    assert len(mstats.load(path, since="5m", now=now)[0]) == 7
    only_b, events, _ = mstats.load(path, adapter="b")
    assert [row["adapter_label"] for row in only_b] == ["mix(a=0.7,b=0.3)"] and [e["kind"] for e in events] == ["evict"]
    base, events, _ = mstats.load(path, adapter="none")
    assert {row["adapter_label"] for row in base} == {BASE_LABEL} and len(base) == 2 and events == []
    assert mstats.load(tmp_path / "missing.sqlite") is None


def test_csv_export(tmp_path):
    path = tmp_path / "log.sqlite"
    fill(path, time.time())
    out = mstats.write_csv(mstats.load(path)[0], tmp_path / "rows.csv")
    with open(out, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 13 and records[0]["time_utc"].endswith("+00:00")
    assert json.loads(records[0]["adapters"]) == ["a"] and records[0]["latency_ms"] == "10.0"
    assert records[11]["error_type"] == "ContextOverflowError" and records[11]["tokens_per_s"] == ""
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("log.sqlite")] == ["rows.csv"]  # no temp file
    with pytest.raises(OSError):
        mstats.write_csv([], tmp_path / "no-such-folder" / "rows.csv")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "log.sqlite"
    fill(path, time.time())
    out = mstats.plot(mstats.load(path)[0], tmp_path / "chart.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'adaptrix\[plot\]'"):
        mstats.plot([], tmp_path / "chart.png")
    assert not (tmp_path / "chart.png").exists()


# -- through the engine on a tiny model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_store(tiny_model_dir, tmp_path_factory, single_torch_thread):
    """An adapter store with 'tiny' (untrained LoRA on every layer, keyword 'widget', an evaluation set)."""
    from adaptrix_core.engine import ModularAdaptrixEngine

    store = tmp_path_factory.mktemp("monitoring-adapters")
    with ModularAdaptrixEngine(model_id=str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store)) as engine:
        engine.create_adapter("tiny", layers="all", rank=4)
        engine.save_adapter("tiny", description="Answers questions about widgets.", evaluation={"data": "eval.jsonl"},
                            routing={"keywords": ["widget"], "example_prompts": ["Tell me about the widget."]})
    (store / "tiny" / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n"
                                                       for w in ("one", "two", "three")))
    return store


def test_engine_requests_recorded_through_request_fields(tiny_model_dir, tiny_store, tmp_path):
    from adaptrix_core.engine import ModularAdaptrixEngine

    path = tmp_path / "log.sqlite"
    log = new_log(path)
    with ModularAdaptrixEngine(model_id=str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tiny_store),
                               router="keyword") as engine:
        for adapter in (None, "tiny", "auto"):
            result = engine.query("Tell me about the widget.", adapter=adapter, temperature=0, max_new_tokens=4)
            log.record_request(**request_fields(result, source="library", prompt="Tell me about the widget."))
        started = time.perf_counter()
        with pytest.raises(AdaptrixError) as failure:
            engine.query("", temperature=0)
        log.record_request(**failure_fields(failure.value, source="library", model=engine.model_id, backend="hf",
                                            latency_ms=(time.perf_counter() - started) * 1000))
    log.close()
    base, named, routed, failed = rows_of(path)
    assert base["adapter_label"] == BASE_LABEL and base["model"] == str(tiny_model_dir("llama")) and base["backend"] == "hf"
    assert base["completion_tokens"] == result.completion_tokens and base["prompt_tokens"] > 0
    assert base["finish_reason"] in ("stop", "length") and base["tokens_per_s"] > 0 and base["prompt"] is None
    assert named["adapters"] == ["tiny"] and named["router"] is None
    assert routed["router"] == "keyword" and routed["routed"] == {"tiny": 1.0} and routed["route_confidence"] > 0
    assert failed["error_type"] == "InvalidPromptError" and failed["tokens_per_s"] is None


def test_evaluation_set_conventions(tmp_path):
    folder = tmp_path / "adapters" / "x"
    folder.mkdir(parents=True)
    (folder / "held-out.jsonl").write_text("{}\n")
    meta = AdapterMetadata(name="x", rank=4, alpha=8, evaluation={"data": "held-out.jsonl", "metric": "exact_match"})
    assert evaluation_set(meta, folder) == (folder / "held-out.jsonl", "exact_match", "evaluation")
    missing = AdapterMetadata(name="x", rank=4, alpha=8, evaluation="nowhere.jsonl")
    assert evaluation_set(missing, folder)[0] is None and "was not found" in evaluation_set(missing, folder)[2]
    # the demo adapters record the absolute path they were trained from, on another machine
    task = tmp_path / "repo" / "data" / "demo" / "dates"
    task.mkdir(parents=True)
    (task / "test.jsonl").write_text("{}\n")
    demo = AdapterMetadata(name="x", rank=4, alpha=8, training={"data": "/elsewhere/data/demo/dates/train.jsonl"})
    assert evaluation_set(demo, folder, [tmp_path / "repo"])[0] == task / "test.jsonl"
    assert evaluation_set(demo, folder)[0] is None
    assert evaluation_set(AdapterMetadata(name="x", rank=4, alpha=8), folder)[0] is None


def test_demo_adapters_find_their_test_sets():
    from adaptrix_core.adapters.store import AdapterManager

    store = AdapterManager(REPO / "adapters")
    for name in ("arithmetic", "dates", "extraction"):
        path, _, _ = evaluation_set(store.metadata(name), store.path(name), [REPO])
        assert path.parts[-4:] == ("data", "demo", name, "test.jsonl") and path.is_file()


# -- the CLI ----------------------------------------------------------------------------------------------------
@pytest.fixture
def invoke(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ADAPTRIX_MONITORING__PATH", str(tmp_path / "log.sqlite"))

    def run(*args: str, code: int = 0):
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return result

    return run


def test_cli_stats(invoke, tmp_path):
    empty = invoke("stats")
    assert "No requests recorded yet" in empty.output
    fill(tmp_path / "log.sqlite", time.time())
    report = json.loads(invoke("stats", "--json").stdout)
    assert report["count"] == 13 and report["exists"] and {g["adapter"] for g in report["by_adapter"]} >= {"a", BASE_LABEL}
    recent = json.loads(invoke("stats", "--since", "1h", "--adapter", "none", "--json").stdout)
    assert recent["count"] == 1 and recent["errors"] == 1
    table = invoke("stats", "--since", "1d").output
    for text in ("per adapter", "base model", "per routing decision", "keyword", "adapter events", "mix(a=0.7,b=0.3)"):
        assert text in table
    exported = invoke("stats", "--adapter", "a", "--csv", str(tmp_path / "a.csv")).output
    assert "wrote 11 rows" in exported and len((tmp_path / "a.csv").read_text().splitlines()) == 12


def test_cli_stats_errors_are_one_line(invoke, tmp_path):
    bad = invoke("stats", "--since", "soon", code=2)
    assert bad.output.count("\n") == 1 and "'soon' is not a time window" in bad.output
    assert "Invalid adapter name" in invoke("stats", "--adapter", "../x", code=1).output
    assert ".png" in invoke("stats", "--plot", str(tmp_path / "chart.jpg"), code=2).output
    (tmp_path / "log.sqlite").write_text("hello")
    broken = invoke("stats", "--json", code=1)
    assert broken.stderr.count("\n") == 1 and "not an Adaptrix request log" in broken.stderr
    assert json.loads(broken.stdout)["error"]["type"] == "MonitoringError"


def test_cli_stats_plot_without_matplotlib(invoke, tmp_path, monkeypatch):
    fill(tmp_path / "log.sqlite", time.time())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = invoke("stats", "--plot", str(tmp_path / "chart.png"), "--csv", str(tmp_path / "rows.csv"), code=1)
    assert result.output.count("\n") == 1 and "adaptrix[plot]" in result.output
    assert not (tmp_path / "chart.png").exists() and not (tmp_path / "rows.csv").exists()


def test_cli_stats_plot(invoke, tmp_path):
    pytest.importorskip("matplotlib")
    fill(tmp_path / "log.sqlite", time.time())
    assert "wrote the plot" in invoke("stats", "--plot", str(tmp_path / "chart.png")).output
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_stats_never_loads_a_model(tmp_path):
    script = ("import json, sys\nfrom click.testing import CliRunner\nfrom adaptrix_core.cli import cli\n"
              "result = CliRunner().invoke(cli, ['stats', '--json'])\nassert result.exit_code == 0, result.output\n"
              "print(json.dumps([m for m in ('torch', 'transformers', 'adaptrix_core.engine') if m in sys.modules]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "ADAPTRIX_MONITORING__PATH": str(tmp_path / "log.sqlite")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_cli_benchmark(invoke, tiny_model_dir, tiny_store, single_torch_thread):
    model = ["--model", str(tiny_model_dir("llama")), "--device", "cpu", "--adapters-dir", str(tiny_store)]
    report = json.loads(invoke("benchmark", "tiny", *model, "--max-new-tokens", "4", "--rounds", "2", "--json").stdout)
    for side in ("base", "with_adapter"):
        assert report[side]["ttft_ms"] > 0 and report[side]["decode_tokens_per_s"] > 0
        assert [run["completion_tokens"] for run in report[side]["runs"]] == [4, 4]
    assert report["switch"]["first_load_ms"] > 0 and report["switch"]["reload_ms"] > 0
    assert report["memory"]["adapter_bytes"] > 0 and report["memory"]["weights_file_bytes"] > 0
    evaluation = report["evaluation"]
    assert evaluation["examples"] == 3 and evaluation["metric"] == "exact_match"
    assert 0 <= evaluation["adapter_score"] <= 1 and 0 <= evaluation["base_score"] <= 1
    table = invoke("benchmark", "tiny", *model, "--max-new-tokens", "2", "--rounds", "1", "--eval-limit", "0").output
    for text in ("time to first token", "decode tokens/s", "switch cost", "memory:", "task score: not measured"):
        assert text in table


def test_cli_benchmark_errors_are_one_line(invoke, tiny_model_dir, tiny_store):
    model = ["--model", str(tiny_model_dir("llama")), "--device", "cpu", "--adapters-dir", str(tiny_store)]
    missing = invoke("benchmark", "nope", *model, code=1)
    assert missing.output.count("\n") == 1 and "No adapter named 'nope'" in missing.output
    assert "Invalid value for '--max-new-tokens'" in invoke("benchmark", "tiny", *model, "--max-new-tokens", "1", code=2).output
    blank = invoke("benchmark", "tiny", *model, "--prompt", " ", "--json", code=1)
    assert json.loads(blank.stdout)["error"]["type"] == "InvalidPromptError" and blank.stderr.count("\n") == 1
