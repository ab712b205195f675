#!/usr/bin/env python
"""Benchmark the request scheduler: iteration-level batching vs one at a time vs a static batch.

The same greedy requests (natural-length answers over the demo adapters, mixed, plus base-model
prompts) run three ways on the engine's default model, in interleaved rounds after one warm-up each:

* ``scheduler``: all submitted at once to ``Scheduler(engine, max_batch_size=B)``; rows join and
  leave the running batch at step boundaries (``adaptrix_core/server/scheduler.py``);
* ``one_at_a_time``: ``engine.query`` for each request in turn;
* ``static``: ``engine.generate_batch`` in chunks of B requests, each running until its longest
  answer ends.

Throughput is completion tokens (the counts the one-at-a-time answers report, identical texts on
every side are checked) per wall-clock second. Each round records how many CPU cores other
processes kept busy meanwhile (``other_cores``): rounds on a shared machine are noisy. Prints a
table and writes JSON (``benchmarks/results/scheduler.json`` by default).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_scheduler.py --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ContentionMeter
from harness import machine_info as machine_facts

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO_ROOT / "data" / "demo"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "scheduler.json"
TASKS = ("arithmetic", "dates", "extraction")
BASE_PROMPTS = (
    "Give three tips for keeping a small vegetable garden healthy.",
    "Explain in two sentences why the sky looks blue.",
    "What is the capital of France?",
    "Name two primary colors.",
)
SIDES = ("scheduler", "one_at_a_time", "static")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_scheduler.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="requests per round (tasks cycled, then base prompts)")
    parser.add_argument("--batch-size", type=int, default=8, help="scheduler max_batch_size and static chunk size")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="max_new_tokens of every request")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds kept (after one warm-up per side)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="sides to run")
    parser.add_argument("--model", default=None, help="engine model_id (default: the embedded default model)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before loading")
    parser.add_argument("--adapters-dir", type=Path, default=REPO_ROOT / "adapters", help="store of the demo adapters")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    return parser.parse_args(argv)


def workload(count: int) -> list[tuple[str, str | None]]:
    """``count`` (prompt, adapter) pairs: the demo tasks' held-out prompts and base-model prompts, interleaved."""
    per_task = {}
    for task in TASKS:
        lines = (DEMO_DATA / task / "test.jsonl").read_text(encoding="utf-8").splitlines()
        per_task[task] = [json.loads(line)["prompt"] for line in lines if line.strip()]
    jobs: list[tuple[str, str | None]] = []
    for i in range(count):
        slot = i % 4
        if slot < 3:
            jobs.append((per_task[TASKS[slot]][i // 4], TASKS[slot]))
        else:
            jobs.append((BASE_PROMPTS[(i // 4) % len(BASE_PROMPTS)], None))
    return jobs


def make_sides(engine: Any, jobs: list[tuple[str, str | None]], args: argparse.Namespace) -> dict[str, Callable[[], list[str]]]:
    from adaptrix_core.server.scheduler import Scheduler

    gen = {"temperature": 0, "max_new_tokens": args.max_new_tokens}

    def scheduler() -> list[str]:
        sched = Scheduler(engine, max_batch_size=args.batch_size, max_queue=max(64, len(jobs))).start()
        try:
            handles = [sched.submit(prompt=p, adapter=a, **gen) for p, a in jobs]
            return [h.result().text for h in handles]
        finally:
            sched.stop()

    def one_at_a_time() -> list[str]:
        return [engine.query(p, adapter=a, **gen).text for p, a in jobs]

    def static() -> list[str]:
        texts = []
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start:start + args.batch_size]
            texts += engine.generate_batch([p for p, _ in chunk], adapters=[a for _, a in chunk], **gen)
        return texts

    sides = {"scheduler": scheduler, "one_at_a_time": one_at_a_time, "static": static}
    return {name: sides[name] for name in args.sides}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from adaptrix_core import ModularAdaptrixEngine

    config = {"adapters": {"directory": str(args.adapters_dir), "cache_size": 4}}
    engine = ModularAdaptrixEngine(args.model, config=config).initialize()
    jobs = workload(args.requests)
    gen = {"temperature": 0, "max_new_tokens": args.max_new_tokens}
    reference = [engine.query(p, adapter=a, **gen) for p, a in jobs]
    tokens = sum(r.completion_tokens for r in reference)
    sides = make_sides(engine, jobs, args)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    identical = {name: True for name in sides}
    for round_index in range(args.rounds + 1):  # round 0 is the warm-up
        for name, run in sides.items():
            with ContentionMeter() as meter:
                started = time.perf_counter()
                texts = run()
                seconds = time.perf_counter() - started
            identical[name] &= texts == [r.text for r in reference]
            if round_index:
                runs[name].append({"seconds": seconds, "tokens_per_s": tokens / seconds,
                                   "other_cores": meter.other_cores})
            print(f"round {round_index}{' (warm-up)' if not round_index else ''} {name}: {seconds:.2f} s, "
                  f"{tokens / seconds:.1f} tok/s, others kept {meter.other_cores or 0:.2f} cores busy", flush=True)
    summary = {name: statistics.median(r["tokens_per_s"] for r in rows) for name, rows in runs.items()}
    result = {
        "benchmark": "scheduler", "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_facts(), "model": engine.model_id, "requests": len(jobs), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "completion_tokens": [r.completion_tokens for r in reference],
        "adapters": [a for _, a in jobs], "identical_outputs": identical, "runs": runs,
        "median_tokens_per_s": summary,
    }
    if "one_at_a_time" in summary:
        result["ratio_to_one_at_a_time"] = {name: tps / summary["one_at_a_time"] for name, tps in summary.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(jobs)} requests, answers of {min(result['completion_tokens'])}-{max(result['completion_tokens'])} "
          f"tokens ({tokens} in all), batch size {args.batch_size}, {args.rounds} rounds")
    print(f"{'side':<15} {'median tok/s':>13} {'vs one at a time':>17} {'identical':>10}")
    for name, tps in summary.items():
        ratio = result.get("ratio_to_one_at_a_time", {}).get(name)
        print(f"{name:<15} {tps:>13.1f} {'' if ratio is None else f'{ratio:.2f}x':>17} {identical[name]!s:>10}")
    print(f"JSON: {args.out}")
    engine.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
