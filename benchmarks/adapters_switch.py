"""Adapter benchmark 1: switch latency to a loaded adapter, against plain peft and a full reload.

Sides, each timed within one round (``--switch-rounds`` rounds, a contended round is redone):

* engine: ``engine.switch_adapter(name)`` between two loaded adapters (``--switch-inner`` calls);
  the activation every adapter-named generate runs (``PeftAdapters.activated([name])``, peft
  ``set_adapter`` over all LoRA layers); ``switch_adapter`` + ``generate(max_new_tokens=1)`` after a
  switch against the same adapter; cold load: ``unload_adapter``, then ``load_adapter`` + switch;
* plain peft on a separate transformers copy of the model (``engine.get_model_info()["weights_path"]``):
  ``PeftModel.load_adapter(folder, name)`` + ``set_adapter(name)``, and ``set_adapter`` alone
  between two loaded adapters;
* reloading everything: ``AutoModelForCausalLM.from_pretrained`` + ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from pathlib import Path
from typing import Any

import harness
from adapters_common import read_prompts

SAMPLE_KEYS = (
    "engine_switch_adapter", "engine_activation", "engine_generate1_after_switch", "engine_generate1_same",
    "engine_switch_plus_generate1_after_switch", "engine_switch_plus_generate1_same",
    "engine_generate1_base", "engine_cold_load_and_switch", "peft_set_adapter_loaded",
    "peft_load_adapter_and_set", "full_reload")


def stats_ms(samples_s: list[float]) -> dict[str, Any]:
    """``n``, median, min, max and p90 of samples in seconds, as milliseconds."""
    s = harness.summarize(harness.ms(v) for v in samples_s)
    return {"n": s["n"], "median_ms": s["median"], "min_ms": s["min"], "max_ms": s["max"], "p90_ms": s["p90"]}


def measure_switch(args: argparse.Namespace, engine: Any, names: list[str], store: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Switch figures in milliseconds: every kept sample, their stats and the ratios to the engine's switch."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    now = time.perf_counter
    a, b = names[0], names[1]
    folder_a, folder_b = store / a, store / b
    weights_path = info["weights_path"]
    dtype = getattr(torch, info["dtype"])
    device = engine.backend.device
    lora = engine.backend.lora
    prompt = read_prompts(a, 1)[0]

    engine.preload([a, b])
    print("switch: loading a plain transformers + peft copy of the model ...", file=sys.stderr)
    plain_base = AutoModelForCausalLM.from_pretrained(weights_path, dtype=dtype, local_files_only=True).to(device).eval()
    plain = PeftModel.from_pretrained(plain_base, str(folder_a), adapter_name="a").eval()
    plain.load_adapter(str(folder_b), adapter_name="b")  # for set_adapter between two loaded adapters

    def gen1(adapter: Any = contextlib.nullcontext) -> float:
        started = now()
        if adapter is contextlib.nullcontext:
            engine.generate(prompt, temperature=0, max_new_tokens=1)  # the active adapter
        else:
            engine.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=1)
        return now() - started

    def one_round() -> dict[str, list[float]]:
        rs: dict[str, list[float]] = {k: [] for k in SAMPLE_KEYS}
        gc.collect()
        # (a) switch_adapter alone, alternating between two loaded adapters
        for i in range(args.switch_inner):
            target = a if i % 2 == 0 else b
            started = now()
            engine.switch_adapter(target)
            rs["engine_switch_adapter"].append(now() - started)
        # (b) the activation every adapter-named generate runs (peft set_adapter over all LoRA layers)
        for i in range(args.switch_inner):
            target = a if i % 2 == 0 else b
            started = now()
            with lora.activated([target]):
                pass
            rs["engine_activation"].append(now() - started)
        # (c) switch_adapter + generate(max_new_tokens=1) on the active adapter: after a switch vs same adapter
        for _ in range(args.switch_generate_pairs):
            for target in (a, b):  # previous call used the other adapter -> switch, then same
                for kind in ("after_switch", "same"):
                    started = now()
                    engine.switch_adapter(target)
                    switched = now()
                    gen_s = gen1()
                    rs[f"engine_generate1_{kind}"].append(gen_s)
                    rs[f"engine_switch_plus_generate1_{kind}"].append(switched - started + gen_s)
        rs["engine_generate1_base"].append(gen1(None))
        # (d) engine cold load: unload, then load_adapter + switch_adapter (validate, sha256, inject)
        engine.switch_adapter(a)
        engine.unload_adapter(b)
        gc.collect()
        started = now()
        engine.load_adapter(b)
        engine.switch_adapter(b)
        rs["engine_cold_load_and_switch"].append(now() - started)
        # (e) plain peft: set_adapter between two loaded adapters
        for i in range(args.switch_inner):
            started = now()
            plain.set_adapter("a" if i % 2 == 0 else "b")
            rs["peft_set_adapter_loaded"].append(now() - started)
        # (f) plain peft: load_adapter(folder) + set_adapter (the adapter was not loaded)
        plain.set_adapter("a")
        plain.delete_adapter("b")
        gc.collect()
        started = now()
        plain.load_adapter(str(folder_b), adapter_name="b")
        plain.set_adapter("b")
        rs["peft_load_adapter_and_set"].append(now() - started)
        # (g) reload everything: base model from disk + PeftModel.from_pretrained
        gc.collect()
        started = now()
        model = AutoModelForCausalLM.from_pretrained(weights_path, dtype=dtype, local_files_only=True).to(device).eval()
        reloaded = PeftModel.from_pretrained(model, str(folder_b), adapter_name="b").eval()
        rs["full_reload"].append(now() - started)
        del model, reloaded
        gc.collect()
        return rs

    def progress(block: harness.Block) -> None:
        rs, ms = block.result, harness.ms
        print(f"  switch round {block.round}: switch_adapter {ms(rs['engine_switch_adapter'][-1]):.3f} ms, "
              f"cold load {ms(rs['engine_cold_load_and_switch'][-1]):.1f} ms, "
              f"peft load_adapter+set {ms(rs['peft_load_adapter_and_set'][-1]):.1f} ms, "
              f"full reload {ms(rs['full_reload'][-1]):.0f} ms  other processes: "
              f"{block.other_cores if block.other_cores is None else round(block.other_cores, 2)} cores"
              f"{'  (contended: round discarded, redone)' if block.discarded else ''}", file=sys.stderr)

    # warm-up
    engine.switch_adapter(b)
    gen1()
    gen1(None)
    blocks = harness.quiet_blocks(one_round, args.switch_rounds, contention_threshold=args.contention_threshold,
                                  max_redo=args.max_redo, on_block=progress)
    samples: dict[str, list[float]] = {k: [] for k in SAMPLE_KEYS}
    for block in blocks:
        if not block.discarded:
            for key, values in block.result.items():
                samples[key].extend(values)
    plain = plain_base = None  # free the plain copy before the next measurement
    gc.collect()

    stats = {k: stats_ms(v) for k, v in samples.items()}
    med = {k: v["median_ms"] for k, v in stats.items()}
    activation_from_generate = med["engine_generate1_after_switch"] - med["engine_generate1_same"]
    # Headline engine switch: switch_adapter + the activation the next generate runs (measured directly;
    # the engine runs it on every adapter-named call, switched or not).
    engine_switch_ms = med["engine_switch_adapter"] + med["engine_activation"]
    return {
        "adapters": [a, b],
        "prompt_for_generate1": prompt,
        "samples_ms": {k: [harness.ms(s) for s in v] for k, v in samples.items()},
        "rounds_contention": [{"round": blk.round, "other_processes_cores": blk.other_cores, "discarded": blk.discarded}
                              for blk in blocks],
        "rounds_discarded_for_contention": sum(blk.discarded for blk in blocks),
        "stats": stats,
        "engine_switch_ms": engine_switch_ms,
        "activation_cost_from_generate1_ms": activation_from_generate,
        "ratios": {
            "peft_load_adapter_and_set_over_engine_switch": med["peft_load_adapter_and_set"] / engine_switch_ms,
            "full_reload_over_engine_switch": med["full_reload"] / engine_switch_ms,
            "engine_cold_load_over_peft_load_adapter": med["engine_cold_load_and_switch"] / med["peft_load_adapter_and_set"],
            "full_reload_over_engine_cold_load": med["full_reload"] / med["engine_cold_load_and_switch"],
            "engine_switch_over_peft_set_adapter_loaded": engine_switch_ms / med["peft_set_adapter_loaded"],
        },
    }


def report_switch(s: dict[str, Any]) -> None:
    st = s["stats"]
    a, b = s["adapters"]
    rows_spec = [
        ("engine_switch_adapter", f"engine.switch_adapter({a}|{b}), both loaded"),
        ("engine_activation", "engine activation per adapter-named call (peft set_adapter over all LoRA layers)"),
        ("engine_switch_plus_generate1_after_switch", "switch_adapter + generate(max_new_tokens=1), adapter changed"),
        ("engine_switch_plus_generate1_same", "switch_adapter + generate(max_new_tokens=1), same adapter"),
        ("engine_generate1_base", "generate(adapter=None, max_new_tokens=1), base"),
        ("engine_cold_load_and_switch", "engine unload -> load_adapter + switch_adapter (from store)"),
        ("peft_set_adapter_loaded", "plain peft set_adapter, both loaded"),
        ("peft_load_adapter_and_set", "plain peft load_adapter(folder) + set_adapter"),
        ("full_reload", "full reload: from_pretrained(model) + PeftModel.from_pretrained"),
    ]
    rows = [(label, str(st[key]["n"]), f"{st[key]['median_ms']:.3f}", f"{st[key]['min_ms']:.3f}", f"{st[key]['max_ms']:.3f}")
            for key, label in rows_spec]
    r = s["ratios"]
    notes = [
        f"engine switch to a loaded adapter = switch_adapter + activation = {s['engine_switch_ms']:.3f} ms "
        f"(generate(max_new_tokens=1) after a switch minus same adapter: {s['activation_cost_from_generate1_ms']:+.3f} ms)",
        f"plain peft load_adapter + set_adapter / engine switch = {r['peft_load_adapter_and_set_over_engine_switch']:.0f}x",
        f"full reload / engine switch = {r['full_reload_over_engine_switch']:.0f}x",
        f"engine cold load / plain peft load_adapter + set_adapter = {r['engine_cold_load_over_peft_load_adapter']:.2f}x; "
        f"full reload / engine cold load = {r['full_reload_over_engine_cold_load']:.1f}x",
        f"engine switch / plain peft set_adapter (both loaded) = {r['engine_switch_over_peft_set_adapter_loaded']:.2f}x",
    ]
    harness.print_table("1. Switch latency (ms)", ("operation", "n", "median ms", "min ms", "max ms"), rows, notes)
