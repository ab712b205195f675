"""Adapter benchmark 3: a mixed-adapter batch against the same prompts one by one.

8 prompts over the 4 adapters (2 each, interleaved): ``engine.generate_batch(prompts, adapters=[...])``
against 8 x ``engine.generate(prompt, adapter=...)``, greedy, ``--batch-max-new-tokens``, in
interleaved rounds (``--batch-runs``, after one warm-up each). Workloads on these sides:

* fixed length (``ignore_eos=True``: the same work on both sides), where the target (speedup at least
  ``--batch-target``) is judged;
* natural stops (answers end where the model ends them);
* long answers to 8 open prompts (diagnostic; ``--no-long-workload`` leaves it out).

Diagnostics: every forward pass timed in one more call of each side (plus all rows on the base model
and all rows on one adapter), and both sides again with ``cache_size`` 3, counting reloads.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import harness
from adapters_common import DEMO_DATA, EXTRA_PROMPTS, read_prompts
from probes import GenerateProbe

# Open prompts with long answers for the diagnostic "long" batch workload (no row stops early).
LONG_PROMPTS = (
    "Write a detailed essay about the history of the printing press.",
    "Describe in detail how a steam engine works, step by step.",
    "Write a long story about a lighthouse keeper during a winter storm.",
    "Explain in detail how vaccines train the immune system.",
    "Write a detailed essay about the causes of the French Revolution.",
    "Describe in detail the water cycle and its effect on the weather.",
    "Write a long story about two friends who build a boat together.",
    "Explain in detail how a computer processor executes a program.",
)


def batch_workload(names: list[str], fourth_is_copy: bool, synthetic: bool) -> tuple[list[str], list[str]]:
    """8 prompts over 4 adapters, 2 each, interleaved (a, b, c, d, a, b, c, d)."""
    per_adapter: dict[str, list[str]] = {}
    for name in names[:3]:
        per_adapter[name] = list(EXTRA_PROMPTS) if synthetic and not (DEMO_DATA / name).is_dir() else read_prompts(name, 2)
    per_adapter[names[3]] = list(EXTRA_PROMPTS)
    prompts, adapters = [], []
    for i in range(2):
        for name in names:
            prompts.append(per_adapter[name][i])
            adapters.append(name)
    return prompts, adapters


def cache_check(args: argparse.Namespace, engine: Any, names: list[str], fns: dict[str, Callable[[], dict[str, Any]]],
                cache_size: int) -> dict[str, Any]:
    """Run both batch sides with a smaller adapter cache; count adapter loads from the store."""
    backend = engine.backend
    loads: list[str] = []
    inject = backend.inject_lora

    def counting_inject(name: str, *a: Any, **k: Any) -> int:
        loads.append(name)
        return inject(name, *a, **k)

    previous = engine.config.adapters.cache_size
    backend.inject_lora = counting_inject
    engine.config.adapters.cache_size = cache_size
    try:
        for fn in fns.values():  # settle the cache at the new size
            fn()
        figures: dict[str, Any] = {}
        for side in fns:
            figures[side] = {"seconds": [], "loads_per_call": []}
        for _ in range(args.cache_check_runs):
            for side, fn in fns.items():
                gc.collect()
                loads.clear()
                figures[side]["seconds"].append(fn()["seconds"])
                figures[side]["loads_per_call"].append(len(loads))
        for side in figures:
            figures[side]["median_seconds"] = harness.median(figures[side]["seconds"])
        return {"cache_size": cache_size, "sides": figures,
                "speedup": figures["one_by_one"]["median_seconds"] / figures["batch"]["median_seconds"]}
    finally:
        engine.config.adapters.cache_size = previous
        del backend.inject_lora
        engine.preload(names)


class ForwardTimer:
    """Times every forward pass of the transformers model (hooks on ``engine.backend.model``) during a
    call: the first pass of a generate call is the prefill, the others are one decode step each."""

    def __init__(self, engine: Any):
        self.model = engine.backend.model
        self.passes: list[tuple[int, int, float]] = []  # (batch rows, input length, seconds)
        self._handles: list[Any] = []
        self._started = 0.0

    def __enter__(self) -> ForwardTimer:
        def pre(module: Any, args: Any, kwargs: Any) -> None:
            self._started = time.perf_counter()

        def post(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows, length = (tuple(ids.shape) if ids is not None else (0, 0))
            self.passes.append((int(rows), int(length), time.perf_counter() - self._started))

        self._handles = [self.model.register_forward_pre_hook(pre, with_kwargs=True),
                         self.model.register_forward_hook(post, with_kwargs=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()

    def breakdown(self, seconds: float) -> dict[str, Any]:
        prefill = [p for p in self.passes if p[1] > 1]
        decode = [p for p in self.passes if p[1] == 1]
        return {
            "forward_passes": len(self.passes),
            "prefill_passes": len(prefill),
            "prefill_rows_x_tokens": [f"{r}x{n}" for r, n, _ in prefill],
            "prefill_ms_total": harness.ms(sum(p[2] for p in prefill)),
            "decode_steps": len(decode),
            "decode_rows": sorted({r for r, _, _ in decode}),
            "decode_step_ms_median": harness.ms(harness.median([p[2] for p in decode])) if decode else None,
            "decode_ms_total": harness.ms(sum(p[2] for p in decode)),
            "outside_forward_ms": harness.ms(seconds - sum(p[2] for p in self.passes)),
            "seconds": seconds,
        }


def _run_batch_side(engine: Any, probe: GenerateProbe, prompts: list[str], adapters: list[Any], n: int,
                    batched: bool, ignore_eos: bool = False) -> dict[str, Any]:
    probe.reset()
    started = time.perf_counter()
    gen = {"temperature": 0, "max_new_tokens": n, "ignore_eos": ignore_eos}
    if batched:
        texts = engine.generate_batch(prompts, adapters=adapters, **gen)
    else:
        texts = [engine.generate(p, adapter=a, **gen) for p, a in zip(prompts, adapters)]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "texts": texts, "new_tokens": probe.new_tokens,
            "per_prompt_tokens": [c.completion_tokens for c in probe.completions],
            "generate_s": sum(probe.generate_s), "calls": len(probe.generate_s)}


BATCH_SIDE_LABELS = {
    "batch_fixed": "fixed length: generate_batch(8 task prompts, adapters=[4 adapters x 2], ignore_eos=True)",
    "one_by_one_fixed": "fixed length: 8 x generate(task prompt, adapter=..., ignore_eos=True)",
    "batch": "generate_batch(8 task prompts, adapters=[4 adapters x 2])",
    "one_by_one": "8 x generate(task prompt, adapter=...)",
    "batch_long": "long answers: generate_batch(8 open prompts, 4 adapters x 2)",
    "one_by_one_long": "long answers: 8 x generate(open prompt, adapter=...)",
}


def measure_batch(args: argparse.Namespace, engine: Any, names: list[str], probe: GenerateProbe) -> dict[str, Any]:
    prompts, adapters = batch_workload(names, args.fourth_adapter == "copy", args.synthetic)
    # fixed: every answer exactly n tokens (ignore_eos), the same work on both sides: the throughput
    # target. tasks: natural stops (answers of very different lengths). long: open prompts.
    workloads = {"fixed": (prompts, adapters, True), "tasks": (prompts, adapters, False)}
    if not args.no_long_workload:
        workloads["long"] = (list(LONG_PROMPTS), [names[i % 4] for i in range(8)], False)
    engine.preload(names)
    if len(engine.loaded_adapters()) < len(names):
        print(f"note: cache_size {engine.config.adapters.cache_size} < {len(names)} adapters: adapters will be "
              "evicted and reloaded from disk during this measurement", file=sys.stderr)
    probe.time_generate_of(engine.backend.lora.peft)
    n = args.batch_max_new_tokens
    fns: dict[str, Callable[[], dict[str, Any]]] = {}
    for workload, (ps, ads, fixed) in workloads.items():
        suffix = "" if workload == "tasks" else "_" + workload
        fns["batch" + suffix] = lambda ps=ps, ads=ads, f=fixed: _run_batch_side(engine, probe, ps, ads, n, True, f)
        fns["one_by_one" + suffix] = lambda ps=ps, ads=ads, f=fixed: _run_batch_side(engine, probe, ps, ads, n, False, f)
    warmup = {side: fn() for side, fn in fns.items()}
    # Cross-check the wrapper's token counts against the public API (engine.query, untimed).
    query_tokens = [engine.query(p, adapter=a, temperature=0, max_new_tokens=n).completion_tokens
                    for p, a in zip(prompts, adapters)]
    if query_tokens != warmup["one_by_one"]["per_prompt_tokens"]:
        print(f"warning: engine.query completion_tokens {query_tokens} differ from the counted "
              f"{warmup['one_by_one']['per_prompt_tokens']}", file=sys.stderr)

    def run(side: str) -> dict[str, Any]:
        result = fns[side]()
        result["tokens_per_s"] = result["new_tokens"] / result["seconds"]
        return result

    sides = [harness.Side(side, lambda side=side: run(side), BATCH_SIDE_LABELS[side]) for side in fns]
    rounds = harness.interleaved_rounds(
        sides, args.batch_runs, contention_threshold=args.contention_threshold, max_redo=args.max_redo, label="batch",
        describe=lambda r: f"{r['seconds']:.3f} s  {r['new_tokens']:4d} tokens  {r['tokens_per_s']:6.2f} tok/s")
    runs, kept = rounds.runs, rounds.kept
    figures = {}
    for side, side_runs in harness.by_side(kept).items():
        figures[side] = {
            "label": BATCH_SIDE_LABELS[side],
            "runs": len(side_runs),
            "median_seconds": harness.median(r["seconds"] for r in side_runs),
            "median_tokens_per_s": harness.median(r["tokens_per_s"] for r in side_runs),
            "new_tokens": side_runs[0]["new_tokens"],
            "per_prompt_tokens": warmup[side]["per_prompt_tokens"],
            "median_ms_outside_model_generate": harness.median(harness.ms(r["seconds"] - r["generate_s"]) for r in side_runs),
            "model_generate_calls": side_runs[0]["calls"],
        }
    stable = all(r["texts"] == warmup[r["side"]]["texts"] for r in runs)

    per_workload: dict[str, Any] = {}
    for workload, (ps, ads, _) in workloads.items():
        suffix = "" if workload == "tasks" else "_" + workload
        b, o = "batch" + suffix, "one_by_one" + suffix
        paired = harness.paired(kept, b, o, lambda rb, ro: ro["seconds"] / rb["seconds"])
        tokens = warmup[o]["per_prompt_tokens"]
        mismatches = [
            {"index": i, "adapter": ads[i], "prompt": ps[i], "batch": bt, "one_by_one": st}
            for i, (bt, st) in enumerate(zip(warmup[b]["texts"], warmup[o]["texts"])) if bt != st
        ]
        per_workload[workload] = {
            "prompts": ps, "adapters": ads,
            "speedup": figures[o]["median_seconds"] / figures[b]["median_seconds"],
            "speedup_paired_median": harness.median(paired),
            "tokens_per_s_ratio": figures[b]["median_tokens_per_s"] / figures[o]["median_tokens_per_s"],
            # generate runs one forward pass per new token: one by one sum(t_i) passes of 1 row, the batch
            # max(t_i) passes of 8 rows (rows that finished keep being computed as padding)
            "forward_passes": {"one_by_one": sum(tokens), "batch": max(tokens)},
            "forward_pass_ratio": sum(tokens) / max(tokens),
            "outputs": {"batch": warmup[b]["texts"], "one_by_one": warmup[o]["texts"]},
            "outputs_identical": not mismatches,
            "mismatches": mismatches,
        }

    # Where the time goes: one more call of each side with every forward pass timed, plus the same task
    # batch with every row on the base model and with every row on one adapter (no mixing).
    breakdown: dict[str, Any] = {}
    variants = {side: fn for side, fn in fns.items()}
    variants["batch_all_base"] = lambda: _run_batch_side(engine, probe, prompts, [None] * 8, n, True)
    variants["batch_all_one_adapter"] = lambda: _run_batch_side(engine, probe, prompts, [names[1]] * 8, n, True)
    for side, fn in variants.items():
        gc.collect()
        with ForwardTimer(engine) as timer:
            result = fn()
        breakdown[side] = timer.breakdown(result["seconds"])
        breakdown[side]["per_prompt_tokens"] = result["per_prompt_tokens"]

    small_cache = None
    if args.cache_check_runs and args.cache_size > 3:
        print("batch: extra rounds with cache_size=3 (the configured default) ...", file=sys.stderr)
        small_cache = cache_check(args, engine, names, {"batch": fns["batch"], "one_by_one": fns["one_by_one"]}, 3)
    tasks = per_workload["fixed"]
    return {
        "prompts": prompts,
        "adapters": adapters,
        "max_new_tokens": n,
        "sides": figures,
        "speedup": tasks["speedup"],
        "speedup_paired_median": tasks["speedup_paired_median"],
        "tokens_per_s_ratio": tasks["tokens_per_s_ratio"],
        "target_speedup": args.batch_target,
        "target_met": tasks["speedup"] >= args.batch_target,
        "outputs_identical": tasks["outputs_identical"],
        "mismatches": tasks["mismatches"],
        "workloads": per_workload,
        "per_prompt_tokens": {"batch": warmup["batch"]["per_prompt_tokens"], "one_by_one": warmup["one_by_one"]["per_prompt_tokens"],
                              "engine_query_completion_tokens": query_tokens},
        "forward_breakdown": breakdown,
        "memory_report": engine.memory_report(),
        "with_cache_size_3": small_cache,
        "outputs_stable_across_runs": stable,
        "rounds_discarded_for_contention": rounds.redone,
        "kept_runs_still_contended": rounds.still_contended,
        "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs],
    }


def report_batch(bt: dict[str, Any]) -> None:
    rows = []
    for side, f in bt["sides"].items():
        each = " ".join(f"{r['seconds']:.3f}" for r in bt["runs"] if r["side"] == side and not r["discarded"])
        rows.append((f["label"], f"{f['median_seconds']:.3f}", str(f["new_tokens"]), f"{f['median_tokens_per_s']:.2f}",
                     f"{f['median_ms_outside_model_generate']:.1f}", each))
    verdict = "MET" if bt["target_met"] else "MISSED"
    notes = []
    for workload, w in bt["workloads"].items():
        notes.append(
            f"{workload}: speedup (one by one s / batch s) = {w['speedup']:.2f}x (paired median {w['speedup_paired_median']:.2f}x), "
            f"tokens/s ratio {w['tokens_per_s_ratio']:.2f}x; forward passes one by one {w['forward_passes']['one_by_one']} "
            f"vs batch {w['forward_passes']['batch']} ({w['forward_pass_ratio']:.2f}x); outputs identical: {w['outputs_identical']}")
        for m in w["mismatches"]:
            notes.append(f"  mismatch #{m['index']} ({m['adapter']}): batch {m['batch']!r} vs one by one {m['one_by_one']!r}")
    notes.append(f"per-prompt new tokens (tasks): {bt['per_prompt_tokens']['one_by_one']}; stable across runs: {bt['outputs_stable_across_runs']}")
    small = bt.get("with_cache_size_3")
    if small:
        sb, so = small["sides"]["batch"], small["sides"]["one_by_one"]
        notes.append(f"with cache_size=3 (the configured default) for these 4 adapters: batch {sb['median_seconds']:.3f} s "
                     f"({sb['loads_per_call']} adapter loads from the store per call), one by one {so['median_seconds']:.3f} s "
                     f"({so['loads_per_call']} loads per 8 calls); speedup {small['speedup']:.2f}x")
    notes.append(f"target: speedup >= {bt['target_speedup']:g}x (fixed-length answers, the same work on both sides) "
                 f"-> {verdict} ({bt['speedup']:.2f}x)")
    harness.print_table(f"3. Batch of {len(bt['prompts'])} prompts over {len(set(bt['adapters']))} adapters, "
                        f"max_new_tokens={bt['max_new_tokens']}, greedy",
                        ("side", "median s", "new tokens", "median tok/s", "ms outside model.generate", "runs (s)"), rows, notes)
    rows = []
    for side, b in bt["forward_breakdown"].items():
        rows.append((side, f"{b['seconds']:.3f}", str(b["prefill_passes"]), f"{b['prefill_ms_total']:.0f}",
                     str(b["decode_steps"]), ",".join(map(str, b["decode_rows"])),
                     "-" if b["decode_step_ms_median"] is None else f"{b['decode_step_ms_median']:.1f}",
                     f"{b['decode_ms_total']:.0f}", f"{b['outside_forward_ms']:.0f}"))
    harness.print_table("3b. Where the time goes (one extra call each, every forward pass timed)",
                        ("call", "s", "prefills", "prefill ms", "decode steps", "rows", "ms/step (median)", "decode ms",
                         "ms outside forward"), rows, [])
