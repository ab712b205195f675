"""Adapter benchmark 2: decode tokens/s of the base model, one unmerged LoRA adapter and the same adapter merged.

Sides, interleaved rounds (``--decode-runs``, after one warm-up each), each through ``engine.generate``
on a prompt whose answer runs the full ``--max-new-tokens``:

* base: ``engine.generate(prompt, adapter=None)`` (the adapter stays loaded);
* unmerged: ``engine.generate(prompt, adapter=NAME)``;
* merged: peft ``merge_adapter()``, then the engine's path with its activation bypassed (peft's
  ``set_adapter``/``disable_adapter`` would unmerge); the base weights are restored bit-exactly after.

Target: unmerged costs at most ``--decode-target`` percent more time per token than base.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import harness
from adapters_common import lora_layers
from probes import GenerateProbe

DECODE_LABELS = {
    "base": "base: engine.generate(prompt, adapter=None)",
    "unmerged": "unmerged: engine.generate(prompt, adapter=NAME)",
    "merged": "merged: peft merge_adapter(), engine.generate path, activation bypassed",
}


class DecodeSides:
    """base (adapter=None), unmerged (adapter=name) and merged (merge_adapter + the engine's path
    with the activation bypassed), each through ``engine.generate``."""

    def __init__(self, engine: Any, adapter: str, probe: GenerateProbe):
        import torch

        self.engine, self.adapter, self.probe = engine, adapter, probe
        self.lora = engine.backend.lora
        engine.load_adapter(adapter)
        probe.time_generate_of(self.lora.peft)
        self.peft = self.lora.peft
        self.internal = self.lora.internal(adapter)
        # Exact copies of the weights merge_adapter() changes, restored after every merged call:
        # merge then unmerge in float32 is not exactly the identity.
        self.layers = [m for m in lora_layers(self.peft) if self.internal in m.lora_A]
        self.saved = [m.get_base_layer().weight.detach().clone() for m in self.layers]
        self.torch = torch
        self.merge_s: list[float] = []
        self.unmerge_s: list[float] = []
        self.unmerge_drift: list[float] = []

    @contextlib.contextmanager
    def _merged(self) -> Iterator[None]:
        torch = self.torch
        self.peft.set_adapter(self.internal)
        started = time.perf_counter()
        self.peft.merge_adapter()
        self.merge_s.append(time.perf_counter() - started)
        original = self.lora.activated

        @contextlib.contextmanager
        def as_is(adapters: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
            # The engine's activation calls peft set_adapter()/disable_adapter(), which unmerge a
            # merged model; here the merged peft model is used as it is.
            yield self.peft, {}

        self.lora.activated = as_is
        try:
            yield
        finally:
            del self.lora.activated  # back to the class method
            assert self.lora.activated.__func__ is original.__func__
            started = time.perf_counter()
            self.peft.unmerge_adapter()
            self.unmerge_s.append(time.perf_counter() - started)
            with torch.no_grad():
                drift = 0.0
                for layer, weight in zip(self.layers, self.saved):
                    current = layer.get_base_layer().weight
                    drift = max(drift, float((current - weight).abs().max()))
                    current.copy_(weight)
            self.unmerge_drift.append(drift)

    def run(self, side: str, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        self.probe.reset()
        if side == "merged":
            with self._merged():
                started = time.perf_counter()
                text = self.engine.generate(prompt, adapter=None, temperature=0, max_new_tokens=max_new_tokens)
                seconds = time.perf_counter() - started
        else:
            adapter = None if side == "base" else self.adapter
            started = time.perf_counter()
            text = self.engine.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=max_new_tokens)
            seconds = time.perf_counter() - started
        (completion,) = self.probe.completions
        (generate_s,) = self.probe.generate_s
        return {"seconds": seconds, "generate_s": generate_s, "new_tokens": completion.completion_tokens,
                "prompt_tokens": completion.prompt_tokens, "text": text}


def pick_decode_adapter(engine: Any, names: list[str], args: argparse.Namespace, probe: GenerateProbe) -> str:
    """The first adapter (second, third, first, fourth of the list) whose answer to --prompt runs the full
    --max-new-tokens (a task adapter may answer briefly, which would measure a shorter decode)."""
    order = [names[1], names[2], names[0], names[3]]
    for name in order:
        probe.reset()
        engine.generate(args.prompt, adapter=name, temperature=0, max_new_tokens=args.max_new_tokens)
        tokens = probe.completions[-1].completion_tokens
        if tokens == args.max_new_tokens:
            return name
        print(f"decode: adapter {name!r} answers the prompt in {tokens} tokens (< {args.max_new_tokens}); trying the next",
              file=sys.stderr)
    raise SystemExit("error: no adapter answers --prompt at full length; pass another --prompt or --decode-adapter")


def measure_decode(args: argparse.Namespace, engine: Any, adapter: str, probe: GenerateProbe) -> dict[str, Any]:
    """Decode figures of the three sides, the costs against base, merge/unmerge times and every run."""
    cost = harness.time_cost_percent
    sides_obj = DecodeSides(engine, adapter, probe)
    names = ["base", "unmerged", "merged"]
    warmup = {side: sides_obj.run(side, args.prompt, args.max_new_tokens) for side in names}
    counts = {side: w["new_tokens"] for side, w in warmup.items()}
    if len(set(counts.values())) != 1 or counts["base"] != args.max_new_tokens:
        raise SystemExit(f"error: decode sides generated {counts} new tokens, not {args.max_new_tokens} each; "
                         "pick a --prompt / --decode-adapter that makes every side answer at greater length")

    def run(side: str) -> dict[str, Any]:
        result = sides_obj.run(side, args.prompt, args.max_new_tokens)
        if result["new_tokens"] != args.max_new_tokens:
            raise SystemExit(f"error: the {side} side generated {result['new_tokens']} tokens, not {args.max_new_tokens}")
        result["tokens_per_s"] = result["new_tokens"] / result["seconds"]
        result["generate_only_tokens_per_s"] = result["new_tokens"] / result["generate_s"]
        return result

    sides = [harness.Side(name, lambda name=name: run(name), DECODE_LABELS[name]) for name in names]
    rounds = harness.interleaved_rounds(sides, args.decode_runs, contention_threshold=args.contention_threshold,
                                        max_redo=args.max_redo, label="decode",
                                        describe=lambda r: f"{r['seconds']:.3f} s  {r['tokens_per_s']:6.2f} tok/s")
    runs, kept = rounds.runs, rounds.kept
    figures = {}
    for side, side_runs in harness.by_side(kept).items():
        figures[side] = {
            "runs": len(side_runs),
            "median_tokens_per_s": harness.median(r["tokens_per_s"] for r in side_runs),
            "median_seconds": harness.median(r["seconds"] for r in side_runs),
            "median_generate_only_tokens_per_s": harness.median(r["generate_only_tokens_per_s"] for r in side_runs),
        }

    def paired(side: str) -> list[float]:
        return harness.paired(kept, "base", side, lambda b, s: cost(b["tokens_per_s"], s["tokens_per_s"]))

    base_tps = figures["base"]["median_tokens_per_s"]
    unmerged_cost = cost(base_tps, figures["unmerged"]["median_tokens_per_s"])
    texts = {side: w["text"] for side, w in warmup.items()}
    all_texts = {side: {r["text"] for r in runs if r["side"] == side} | {texts[side]} for side in names}
    return {
        "adapter": adapter,
        "prompt": args.prompt,
        "prompt_tokens": warmup["base"]["prompt_tokens"],
        "max_new_tokens": args.max_new_tokens,
        "sides": figures,
        "cost_percent": {
            "unmerged_vs_base": unmerged_cost,
            "merged_vs_base": cost(base_tps, figures["merged"]["median_tokens_per_s"]),
            "unmerged_vs_merged": cost(figures["merged"]["median_tokens_per_s"], figures["unmerged"]["median_tokens_per_s"]),
            "unmerged_vs_base_paired_median": harness.median(paired("unmerged")),
            "merged_vs_base_paired_median": harness.median(paired("merged")),
            "unmerged_vs_base_generate_only": cost(figures["base"]["median_generate_only_tokens_per_s"],
                                                   figures["unmerged"]["median_generate_only_tokens_per_s"]),
        },
        "target_percent": args.decode_target,
        "target_met": unmerged_cost <= args.decode_target,
        "merge_ms_median": harness.ms(harness.median(sides_obj.merge_s)),
        "unmerge_ms_median": harness.ms(harness.median(sides_obj.unmerge_s)),
        "unmerge_max_abs_drift": max(sides_obj.unmerge_drift) if sides_obj.unmerge_drift else None,
        "merged_layers": len(sides_obj.layers),
        "rounds_discarded_for_contention": rounds.redone,
        "kept_runs_still_contended": rounds.still_contended,
        "outputs": texts,
        "outputs_stable_across_runs": all(len(v) == 1 for v in all_texts.values()),
        "merged_equals_unmerged": texts["merged"] == texts["unmerged"],
        "adapter_changes_output": texts["unmerged"] != texts["base"],
        "runs": [{k: v for k, v in r.items() if k != "text"} for r in runs],
    }


def report_decode(d: dict[str, Any]) -> None:
    rows = []
    for side, f in d["sides"].items():
        each = " ".join(f"{r['tokens_per_s']:.2f}" for r in d["runs"] if r["side"] == side and not r["discarded"])
        rows.append((DECODE_LABELS[side].replace("NAME", repr(d["adapter"])), f"{f['median_tokens_per_s']:.2f}",
                     f"{f['median_seconds']:.3f}", f"{f['median_generate_only_tokens_per_s']:.2f}", each))
    c = d["cost_percent"]
    verdict = "MET" if d["target_met"] else "MISSED"
    notes = [
        f"cost unmerged vs base = base_tok_s/unmerged_tok_s - 1 = {c['unmerged_vs_base']:+.2f}% "
        f"(paired median {c['unmerged_vs_base_paired_median']:+.2f}%, model.generate alone {c['unmerged_vs_base_generate_only']:+.2f}%)",
        f"cost merged vs base = {c['merged_vs_base']:+.2f}% (paired {c['merged_vs_base_paired_median']:+.2f}%); "
        f"unmerged vs merged = {c['unmerged_vs_merged']:+.2f}%",
        f"merge_adapter {d['merge_ms_median']:.1f} ms, unmerge_adapter {d['unmerge_ms_median']:.1f} ms "
        f"({d['merged_layers']} layers; unmerge drift max |dW| {d['unmerge_max_abs_drift']:.2e}, restored exactly)",
        f"outputs: merged == unmerged: {d['merged_equals_unmerged']}; adapter changes output: {d['adapter_changes_output']}; "
        f"stable across runs: {d['outputs_stable_across_runs']}",
        f"target: unmerged cost <= {d['target_percent']:g}% -> {verdict} ({c['unmerged_vs_base']:+.2f}%)",
    ]
    harness.print_table(f"2. Decode, {d['max_new_tokens']} new tokens, greedy, {d['prompt_tokens']} prompt tokens",
                        ("side", "median tok/s", "median s/call", "model.generate alone tok/s", "runs (tok/s)"), rows, notes)
