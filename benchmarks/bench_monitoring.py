#!/usr/bin/env python
"""Benchmark the cost of the request log on generation: the generate benchmark's workload, logging on vs off.

Both sides run ``engine.query(prompt, temperature=0, max_new_tokens=N)`` on the same engine (the
default model, SmolLM2-135M-Instruct, unless ``--model``), with the prompt of
``bench_generate.py``. The "on" side then records the request the way the engine does
(``log.record_request(**request_fields(result, source="library"))``) inside the timed region, into a
``RequestLog`` whose writer thread commits in the background, during the following generations, as
it does in service. Sides alternate round by round (off, on, off, on, ...) after one warm-up each;
contended rounds are discarded and redone (see harness.py). The figure of merit is the extra time
per generated token of the "on" side (median tokens/s, and the median of the per-round ratios);
the target is at most ``--target`` percent (default 1).

A second, separate figure is the time of one ``record_request`` call (the only work on the
caller's thread), measured over ``--calls`` calls into another log.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_generate import DEFAULT_PROMPT  # noqa: E402

harness.offline_environment()

DEFAULT_OUT = harness.RESULTS_DIR / "monitoring.json"
QUICK = {"runs": 1, "max_new_tokens": 8, "calls": 2000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_monitoring.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="kept rounds (one call per side each)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per call")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="user prompt (long answers: every call makes N tokens)")
    parser.add_argument("--model", default="default", help="engine model_id")
    parser.add_argument("--device", default=None, help="engine device; None keeps the configured one")
    parser.add_argument("--calls", type=int, default=20000, help="record_request calls timed for the per-call figure")
    parser.add_argument("--target", type=float, default=1.0, help="maximum accepted cost of logging, percent")
    parser.add_argument("--fail-on-target", action="store_true", help="exit with status 1 when the target is missed")
    harness.add_common_args(parser, default_out=DEFAULT_OUT, contention_threshold=0.15, max_redo=10)
    args = harness.parse_with_quick(parser, argv, QUICK, name="monitoring")
    if args.runs < 1 or args.max_new_tokens < 1 or args.calls < 1:
        parser.error("--runs, --max-new-tokens and --calls must be at least 1")
    return args


def time_record_calls(folder: Path, calls: int) -> dict[str, Any]:
    """Median and p99 of single ``record_request`` calls, the writer thread running; and the CPU time
    the whole process (caller and writer thread, commits included) spends per row, which other
    processes' load does not inflate the way it inflates wall-clock figures."""
    from adaptrix_core.monitoring import RequestLog

    fields = {"model": "m", "backend": "hf", "adapters": ["dates"], "adapter_weights": {"dates": 1.0},
              "prompt_tokens": 40, "completion_tokens": 64, "latency_ms": 900.0, "finish_reason": "length"}
    samples = []
    cpu_started = time.process_time()
    with RequestLog(folder / "calls.sqlite", queue_size=calls + 1) as log:
        for _ in range(calls):
            started = time.perf_counter_ns()
            log.record_request(source="library", **fields)
            samples.append((time.perf_counter_ns() - started) / 1000)
        log.flush()
        written = log.status()["written"]
    cpu_us_per_row = (time.process_time() - cpu_started) / calls * 1e6
    # The sparse case of a service: every row alone in its transaction (one commit, one fsync each).
    lone = max(calls // 100, 20)
    cpu_started = time.process_time()
    with RequestLog(folder / "lone.sqlite") as log:
        for _ in range(lone):
            log.record_request(source="library", **fields)
            log.flush()
    cpu_us_per_lone_row = (time.process_time() - cpu_started) / lone * 1e6
    return {"calls": calls, "written": written, "median_us": harness.median(samples),
            "p99_us": harness.percentile(samples, 0.99), "max_us": max(samples), "cpu_us_per_row": cpu_us_per_row,
            "lone_rows": lone, "cpu_us_per_lone_row": cpu_us_per_lone_row}


def median_interval(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``values`` (seeded: the same runs give the same interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def verdict(low: float, high: float, cpu_cost: float, target: float) -> tuple[bool, str]:
    """Met or missed by the A/B interval when it decides; else by the CPU bound (the A/B cannot resolve it)."""
    if high <= target:
        return True, "the A/B interval is under the target"
    if low > target:
        return False, "the A/B interval is over the target"
    return cpu_cost <= target, (f"the A/B interval spans the target (run-to-run noise), so the CPU bound decides: "
                                f"{cpu_cost:.4f}%")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    from adaptrix_core.engine import ModularAdaptrixEngine
    from adaptrix_core.monitoring import RequestLog, request_fields

    started_at = _dt.datetime.now(_dt.timezone.utc)
    scratch = tempfile.TemporaryDirectory(prefix="adaptrix-bench-monitoring-")
    folder = Path(scratch.name)
    engine = ModularAdaptrixEngine(model_id=args.model, device=args.device).initialize()
    info = engine.get_model_info()
    log = RequestLog(folder / "requests.sqlite")

    def call(record: bool) -> dict[str, Any]:
        started = time.perf_counter()
        result = engine.query(args.prompt, temperature=0, max_new_tokens=args.max_new_tokens)
        if record:
            log.record_request(**request_fields(result, source="library"))
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "new_tokens": result.completion_tokens,
                "tokens_per_s": result.completion_tokens / seconds, "text": result.text}

    sides = [harness.Side("off", lambda: call(False), "logging off"), harness.Side("on", lambda: call(True), "logging on")]
    warmup = {side.name: side.run() for side in sides}
    rounds = harness.interleaved_rounds(sides, args.runs, contention_threshold=args.contention_threshold,
                                        max_redo=args.max_redo, label="monitoring",
                                        describe=lambda r: f"{r['seconds']:.3f} s  {r['tokens_per_s']:6.2f} tok/s")
    log.flush()
    status = log.status()
    log.close()
    expected_rows = 1 + sum(1 for r in rounds.runs if r["side"] == "on")
    per_call = time_record_calls(folder, args.calls)

    kept = rounds.kept
    groups = harness.by_side(kept)
    medians = {name: harness.median(r["tokens_per_s"] for r in runs) for name, runs in groups.items()}
    cost = harness.time_cost_percent(medians["off"], medians["on"])
    paired = harness.paired(kept, "on", "off", lambda on, off: harness.time_cost_percent(off["tokens_per_s"], on["tokens_per_s"]))
    paired_median = harness.median(paired)
    # CPU the log spends per request against the time one request takes: the cost on a loaded machine.
    worst_cpu_us = max(per_call["cpu_us_per_row"], per_call["cpu_us_per_lone_row"])
    cpu_cost = worst_cpu_us / 1e6 / harness.median(r["seconds"] for r in groups["off"]) * 100
    low, high = median_interval(paired)
    met, basis = verdict(low, high, cpu_cost, args.target)
    short = [r for r in rounds.runs if r["new_tokens"] != args.max_new_tokens]
    title = (f"{info['base_model']} | {args.max_new_tokens} new tokens | greedy | {args.runs} interleaved runs/side | "
             f"device {info['device']} | {torch.get_num_threads()} torch threads")
    rows = [(side.label, f"{medians[side.name]:.2f}", f"{harness.median(r['seconds'] for r in groups[side.name]):.3f}",
             " ".join(f"{r['tokens_per_s']:.2f}" for r in groups[side.name])) for side in sides]
    notes = [f"record_request: median {per_call['median_us']:.1f} us, p99 {per_call['p99_us']:.1f} us per call "
             f"({per_call['calls']} calls, all {per_call['written']} committed by the writer thread)",
             f"CPU per logged request (caller + writer thread, commits included): {per_call['cpu_us_per_row']:.1f} us "
             f"in batches, {per_call['cpu_us_per_lone_row']:.1f} us alone in a transaction; the worse is "
             f"{cpu_cost:.4f}% of a median logging-off call",
             f"request log: {status['written']} rows written of {expected_rows} recorded, {status['dropped']} dropped, "
             f"{status['failed']} failed",
             f"paired per-round cost: median {paired_median:+.2f}% (each: {' '.join(f'{p:+.2f}' for p in paired)})"]
    if rounds.redone:
        notes.append(f"{rounds.redone} round(s) discarded and redone: other processes were using the CPU")
    if rounds.still_contended:
        notes.append(f"WARNING: {rounds.still_contended} kept run(s) were contended (--max-redo exhausted)")
    if short:
        notes.append(f"WARNING: {len(short)} run(s) generated fewer than {args.max_new_tokens} tokens")
    notes.append(f"paired cost, 95% interval of the median (bootstrap): {low:+.2f}% to {high:+.2f}%")
    notes.append((f"target: logging costs <= {args.target:g}% time per token -> {'MET' if met else 'MISSED'} "
                  f"({basis}; medians {cost:+.2f}%, paired {paired_median:+.2f}%)", met))
    harness.print_table(title, ("side", "median tok/s", "median s/run", "runs (tok/s)"), rows, notes, left=(0, -1))

    doc = {
        "benchmark": "monitoring: engine.query with the request log on vs off",
        "date": started_at.isoformat(timespec="seconds"),
        "command": harness.command_line(),
        "machine": harness.machine_info(),
        "model": info,
        "settings": {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "runs_per_side": args.runs,
                     "order": "interleaved rounds: off, on, off, on, ...", "quick": args.quick,
                     "on_side": "engine.query(...) then log.record_request(**request_fields(result, source='library')), "
                                "both timed; RequestLog defaults (flush every 1 s, WAL, synchronous=FULL)",
                     "target_percent": args.target, "contention_threshold_cores": args.contention_threshold},
        "summary": {"median_tokens_per_s": medians, "cost_percent": cost, "paired_cost_percent_median": paired_median,
                    "paired_cost_percent_each": paired, "paired_median_interval_95": [low, high],
                    "target_met": met, "target_basis": basis, "record_request_call": per_call,
                    "cpu_cost_percent_of_a_call": cpu_cost,
                    "log_status": status, "rows_expected": expected_rows,
                    "rounds_discarded_for_contention": rounds.redone, "kept_runs_still_contended": rounds.still_contended,
                    "identical_text": len({r["text"] for r in rounds.runs} | {w["text"] for w in warmup.values()}) == 1},
        "runs": [{k: v for k, v in r.items() if k != "text"} for r in rounds.runs],
    }
    print(f"wrote {harness.write_results(args.out, doc)}", file=sys.stderr)
    engine.cleanup()
    scratch.cleanup()
    if status["written"] != expected_rows:
        print(f"error: {expected_rows} rows were recorded but {status['written']} written", file=sys.stderr)
        return 2
    return 1 if args.fail_on_target and not met else 0


if __name__ == "__main__":
    sys.exit(main())
