"""The benchmark harness's pure parts: percentiles and summaries, round bookkeeping, tables, JSON results."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import pytest

from benchmarks import harness


# -- figures ----------------------------------------------------------------------------------------------
def test_percentile_is_nearest_rank_on_sorted_values():
    values = list(range(100, 0, -1))  # 100 .. 1, unsorted on purpose
    assert harness.percentile(values, 0.95) == 95  # the ceil(95.0) = 95th smallest, not the 96th
    assert harness.percentile(values, 0.90) == 90
    assert harness.percentile(values, 0.0) == 1
    assert harness.percentile(values, 1.0) == 100
    assert harness.percentile([7.5], 0.95) == 7.5
    assert harness.percentile([4, 1, 3, 2], 0.5) == 2  # ceil(2.0) = 2nd
    assert harness.percentile([5, 1, 4, 2, 3, 6, 7], 0.9) == 7  # ceil(6.3) = 7th of 7
    assert harness.percentile(range(1, 36), 0.95) == 34  # ceil(33.25) = 34th of 35


def test_percentile_refuses_no_values_and_shares_outside_0_1():
    with pytest.raises(ValueError, match="no values"):
        harness.percentile([], 0.5)
    with pytest.raises(ValueError, match="95"):
        harness.percentile([1, 2], 95)


def test_summarize_gives_median_mean_percentiles_and_range():
    s = harness.summarize([3.0, 1.0, 2.0, 10.0])
    assert s["n"] == 4
    assert s["median"] == s["p50"] == 2.5  # statistics.median: mean of the two middle values
    assert s["mean"] == 4.0
    assert s["p90"] == 10.0 and s["p95"] == 10.0  # ceil(3.6) = ceil(3.8) = 4th of 4
    assert (s["min"], s["max"]) == (1.0, 10.0)
    empty = harness.summarize([])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("median", "mean", "p95", "min"))


def test_median_of_nothing_is_nan_and_ms_converts():
    assert math.isnan(harness.median([]))
    assert harness.median(iter([5, 1, 3])) == 3
    assert harness.ms(0.25) == 250.0


def test_time_cost_percent_sign_follows_the_slower_side():
    assert harness.time_cost_percent(30.0, 25.0) == pytest.approx(20.0)  # 25/s needs 20% more time than 30/s
    assert harness.time_cost_percent(25.0, 30.0) == pytest.approx(-100 / 6)
    assert harness.time_cost_percent(7.0, 7.0) == 0.0


def test_by_side_and_paired_match_runs_round_by_round():
    runs = [{"side": "a", "iteration": 1, "s": 2.0}, {"side": "b", "iteration": 1, "s": 4.0},
            {"side": "a", "iteration": 2, "s": 3.0},  # b's round 2 is missing
            {"side": "b", "iteration": 3, "s": 9.0}, {"side": "a", "iteration": 3, "s": 3.0}]
    groups = harness.by_side(runs)
    assert list(groups) == ["a", "b"]
    assert [r["iteration"] for r in groups["a"]] == [1, 2, 3]
    assert harness.paired(runs, "a", "b", lambda a, b: b["s"] / a["s"]) == [2.0, 3.0]
    assert harness.paired(runs, "a", "missing", lambda a, b: 0.0) == []


# -- rounds -------------------------------------------------------------------------------------------------
@pytest.fixture
def busy_machine(monkeypatch):
    """/proc/stat as seen on a machine where other processes take 1,000 CPU seconds per reading."""
    clock = itertools.count(step=1000.0)
    monkeypatch.setattr(harness, "_busy_cpu_seconds", lambda: next(clock))


def _sides(calls: list[str]) -> list[harness.Side]:
    def make(name):
        def run():
            calls.append(name)
            return {"seconds": 0.001 * len(calls)}
        return run
    return [harness.Side("a", make("a")), harness.Side("b", make("b"))]


def test_interleaved_rounds_alternate_sides_and_number_rounds(monkeypatch, capsys):
    monkeypatch.setattr(harness, "_busy_cpu_seconds", lambda: None)  # unknown contention counts as quiet
    calls: list[str] = []
    rounds = harness.interleaved_rounds(_sides(calls), 3, contention_threshold=0.1, max_redo=5, label="demo")
    assert calls == ["a", "b"] * 3
    assert [(r["side"], r["iteration"]) for r in rounds.runs] == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert rounds.redone == 0 and rounds.still_contended == 0 and len(rounds.kept) == 6
    assert all(r["other_processes_cores"] is None and not r["discarded"] for r in rounds.runs)
    assert capsys.readouterr().err.count("demo round") == 6


def test_contended_rounds_are_redone_at_most_max_redo_times(busy_machine, capsys):
    calls: list[str] = []
    rounds = harness.interleaved_rounds(_sides(calls), 1, contention_threshold=0.5, max_redo=2)
    assert [r["iteration"] for r in rounds.runs] == [1, 1, 2, 2, 3, 3]
    assert [r["discarded"] for r in rounds.runs] == [True, True, True, True, False, False]
    assert rounds.redone == 2
    assert [r["iteration"] for r in rounds.kept] == [3, 3]
    assert rounds.still_contended == 2  # kept although contended: --max-redo was exhausted
    assert "round discarded, redone" in capsys.readouterr().err


def test_quiet_blocks_keeps_the_uncontended_attempts(busy_machine):
    results = iter(range(10))
    blocks = harness.quiet_blocks(lambda: next(results), 2, contention_threshold=0.5, max_redo=3)
    assert [b.result for b in blocks] == [0, 1, 2, 3, 4]
    assert [b.discarded for b in blocks] == [True, True, True, False, False]
    assert [b.round for b in blocks] == [1, 2, 3, 4, 5]
    assert all(b.other_cores > 0.5 and b.seconds >= 0 for b in blocks)


def test_contention_meter_without_proc_stat_reports_none(monkeypatch):
    monkeypatch.setattr(harness, "_busy_cpu_seconds", lambda: None)
    with harness.ContentionMeter() as meter:
        pass
    assert meter.other_cores is None and meter.other_cpu_s is None
    assert not harness.is_contended(None, 0.0)
    assert harness.is_contended(0.2, 0.15) and not harness.is_contended(0.15, 0.15)


# -- tables ---------------------------------------------------------------------------------------------------
def test_format_table_pads_columns_to_the_widest_cell():
    text = harness.format_table("T", ("side", "tok/s"), [("engine", 27.44), ("plain", "26.1")], ["note 1"])
    assert text.split("\n") == [
        "T",
        "side    tok/s",
        "engine  27.44",
        "plain   26.1",
        "note 1",
    ]


def test_format_table_refuses_rows_of_the_wrong_width():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        harness.format_table("T", ("a", "b", "c"), [("1", "2")])


def test_print_table_without_rich_prints_the_plain_table_and_notes(monkeypatch, capsys):
    monkeypatch.setattr(harness, "_console", lambda: None)
    harness.print_table("T", ("x", "y"), [("1", "22")], ["plain note", ("verdict MET", True)])
    assert capsys.readouterr().out == "T\nx  y\n1  22\nplain note\nverdict MET\n"


def test_print_table_with_rich_shows_title_cells_and_literal_notes(capsys):
    pytest.importorskip("rich")
    harness.print_table("Switch latency", ("operation", "median ms"), [("switch_adapter", "1.390")],
                        ["mismatch: '[red]x[/red]'", ("target -> MISSED", False)])
    out = capsys.readouterr().out
    assert "Switch latency" in out and "switch_adapter" in out and "1.390" in out
    assert "'[red]x[/red]'" in out  # notes are not parsed as rich markup
    assert "target -> MISSED" in out


# -- results ----------------------------------------------------------------------------------------------
def test_write_results_adds_machine_and_writes_utf8_json(tmp_path):
    out = harness.write_results(tmp_path / "new" / "bench.json", {"benchmark": "x", "path": Path("/a/b"), "text": "é"})
    raw = out.read_text(encoding="utf-8")
    assert raw.endswith("}\n") and "é" in raw
    doc = json.loads(raw)
    assert doc["benchmark"] == "x" and doc["path"] == "/a/b"
    machine = doc["machine"]
    for key in ("cpu_model", "cpu_count", "ram_bytes", "os", "python", "torch", "transformers", "date"):
        assert key in machine
    assert machine["cpu_count"] >= 1 and machine["ram_bytes"] > 0
    assert list(tmp_path.joinpath("new").iterdir()) == [out]
    reference = tmp_path / "reference.txt"
    reference.write_text("x")
    assert out.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777  # the umask's mode, like any file


def test_write_results_keeps_a_given_machine_and_the_old_file_on_failure(tmp_path):
    out = tmp_path / "bench.json"
    harness.write_results(out, {"machine": {"cpu_model": "given"}, "value": 1})
    assert json.loads(out.read_text())["machine"] == {"cpu_model": "given"}
    with pytest.raises(TypeError, match="cannot write object"):
        harness.write_results(out, {"machine": {}, "value": object()})
    assert json.loads(out.read_text())["value"] == 1  # previous results intact
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind


# -- command line -------------------------------------------------------------------------------------------
def _parser(default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    harness.add_common_args(parser, default_out=default_out, contention_threshold=0.3, max_redo=4)
    return parser


def test_quick_swaps_defaults_but_explicit_flags_win(tmp_path):
    default_out = tmp_path / "results.json"
    args = harness.parse_with_quick(_parser(default_out), [], {"runs": 1}, name="t")
    assert (args.runs, args.out, args.quick, args.contention_threshold, args.max_redo) == (5, default_out, False, 0.3, 4)
    args = harness.parse_with_quick(_parser(default_out), ["--quick"], {"runs": 1}, name="t")
    assert args.runs == 1 and args.max_redo == 0 and args.out == harness.quick_out("t") and args.out != default_out
    args = harness.parse_with_quick(_parser(default_out), ["--quick", "--runs", "3", "--out", "x.json"], {"runs": 1}, name="t")
    assert args.runs == 3 and args.out == Path("x.json")
    assert not hasattr(args, "_default_out")


@pytest.mark.parametrize("argv", [["--max-redo", "-1"], ["--threads", "0"]])
def test_common_flags_are_validated(tmp_path, argv, capsys):
    with pytest.raises(SystemExit):
        harness.parse_with_quick(_parser(tmp_path / "r.json"), argv, {}, name="t")
    assert "must be at least" in capsys.readouterr().err


# -- every benchmark script starts ----------------------------------------------------------------------------
@pytest.mark.parametrize("script", sorted(p.name for p in (Path(__file__).parents[1] / "benchmarks").glob("bench_*.py")))
def test_every_benchmark_script_answers_help(script):
    """Each script's imports resolve (a renamed helper once broke two of them unnoticed) and its options parse."""
    import subprocess
    import sys

    folder = Path(__file__).parents[1] / "benchmarks"
    done = subprocess.run([sys.executable, str(folder / script), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=folder.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_monitoring_verdict_decides_by_the_cpu_bound_only_when_the_ab_cannot():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from bench_monitoring import median_interval, verdict

    low, high = median_interval([0.1, 0.2, 0.3, 0.2, 0.1, 0.25])
    assert 0.1 <= low <= high <= 0.3
    assert verdict(low, high, cpu_cost=5.0, target=1.0) == (True, "the A/B interval is under the target")
    assert verdict(2.0, 3.0, cpu_cost=0.001, target=1.0) == (False, "the A/B interval is over the target")
    met, basis = verdict(-3.0, 4.0, cpu_cost=0.007, target=1.0)
    assert met and "CPU bound decides" in basis
    assert verdict(-3.0, 4.0, cpu_cost=1.5, target=1.0)[0] is False
