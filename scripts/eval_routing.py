"""Evaluate routing: router accuracy on the held-out routing set, and end-to-end answers with adapter="auto".

    python scripts/eval_routing.py [--routers keyword semantic classifier] [--per-task 100] [--out docs/routing_results.json]

1. Each router on ``data/routing/test.jsonl`` (prompts phrased unlike the training data plus
   off-topic prompts): accuracy, macro-F1, confusion matrix, latency p50/p95.
2. End to end on a mixed set of the demo tasks' held-out examples (``data/demo/*/test.jsonl``):
   exact match (JSON match for extraction) of the base model, of the oracle (the right adapter named
   by hand) and of ``adapter="auto"`` with each router.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
TASKS = ("arithmetic", "extraction", "dates")


def load_mixed(per_task: int) -> list[tuple[str, dict]]:
    rows = []
    for task in TASKS:
        lines = (ROOT / "data" / "demo" / task / "test.jsonl").read_text().splitlines()[:per_task]
        rows += [(task, json.loads(line)) for line in lines]
    return rows


def answer(engine, rows, adapters, cache: dict, batch_size: int = 16) -> list[str]:
    """Greedy answers; a (prompt, adapter) pair already answered under another condition is reused
    (greedy decoding is deterministic and a mixed batch equals single runs, see tests/test_adapters.py)."""
    def normal(spec):  # "dates", {"dates": 1.0} and None / {} are the same requests
        return json.dumps({spec: 1.0} if isinstance(spec, str) else (spec or {}), sort_keys=True)

    keys = [(row["prompt"], normal(spec)) for (_, row), spec in zip(rows, adapters)]
    todo = list({key: i for i, key in reversed(list(enumerate(keys))) if key not in cache}.values())
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        texts = engine.generate_batch([rows[i][1]["prompt"] for i in chunk], adapters=[adapters[i] for i in chunk],
                                      temperature=0, max_new_tokens=48)
        cache.update({keys[i]: text for i, text in zip(chunk, texts)})
    return [cache[key] for key in keys]


def score(rows, predictions) -> dict:
    from adaptrix_core.training.metrics import metric_for

    per_task = {}
    for task in TASKS:
        pairs = [(p, row["response"]) for (t, row), p in zip(rows, predictions) if t == task]
        _, metric = metric_for("auto", [reference for _, reference in pairs])
        per_task[task] = sum(metric(p, r) for p, r in pairs) / len(pairs)
    overall = sum(per_task[t] * sum(1 for r in rows if r[0] == t) for t in TASKS) / len(rows)
    return {"overall": overall, **per_task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", nargs="+", default=["keyword", "semantic", "classifier"])
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--adapters-dir", default=str(ROOT / "adapters"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "routing_results.json"))
    parser.add_argument("--part", choices=["all", "routing-set", "end-to-end"], default="all",
                        help="Run one part only (results merge into --out).")
    parser.add_argument("--skip-base", action="store_true", help="Do not re-measure the base model end to end.")
    args = parser.parse_args()

    from adaptrix_core import ModularAdaptrixEngine

    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("routing_set", {})
    results.setdefault("end_to_end", {})
    with ModularAdaptrixEngine(adapters_dir=args.adapters_dir, router=args.routers[0]) as engine:
        for name in args.routers if args.part != "end-to-end" else ():
            result = engine.evaluate_router(ROOT / "data" / "routing" / "test.jsonl", name)
            results["routing_set"][name] = result
            print(f"{name}: accuracy {result['accuracy']:.1%}, macro-F1 {result['macro_f1']:.3f}, "
                  f"p50 {result['latency_ms']['p50']:.2f} ms, p95 {result['latency_ms']['p95']:.2f} ms", flush=True)
        if args.part == "routing-set":
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.out}")
            return
        rows = load_mixed(args.per_task)
        engine.preload(list(TASKS))
        conditions = {"oracle": [task for task, _ in rows]}
        if not args.skip_base:
            conditions = {"base": [None] * len(rows), **conditions}
        for name in args.routers:
            conditions[f"auto ({name})"] = [dict(engine.route(row["prompt"], name).selected) or None for _, row in rows]
        cache: dict = {}
        for name in args.routers:
            routed = conditions[f"auto ({name})"]
            results["end_to_end"].setdefault("routing_agrees_with_oracle", {})[name] = sum(
                spec == {task: 1.0} for spec, (task, _) in zip(routed, rows)) / len(rows)
        for condition, adapters in conditions.items():
            started = time.perf_counter()
            predictions = answer(engine, rows, adapters, cache)
            results["end_to_end"][condition] = {**score(rows, predictions), "seconds": round(time.perf_counter() - started, 1)}
            print(f"{condition}: {json.dumps(results['end_to_end'][condition])}", flush=True)
    results["end_to_end_examples"] = len(rows)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
