#!/usr/bin/env python
"""Benchmark Adaptrix's multi-adapter serving: switch latency, decode cost of LoRA, mixed batches.

Everything runs on the engine's default model (SmolLM2-135M-Instruct unless ``--model`` says
otherwise), greedy, in one process with one torch thread count, with the shipped demo adapters
(``adapters/arithmetic``, ``extraction``, ``dates``) copied into a temporary store plus a fourth
adapter (a renamed copy of ``arithmetic`` by default). The repository's ``adapters/`` folder is
only read.

1. Switch latency to an adapter that is already loaded (cached):
   * engine: ``engine.switch_adapter(name)`` alone; ``switch_adapter`` + ``generate(max_new_tokens=1)``
     when the adapter changes (A, B, A, ...) against when it stays the same (A, A, ...): the
     difference is the activation cost the first generate after a switch pays; and the activation
     itself (``PeftAdapters.activated([name])``, which every adapter-named generate runs);
   * engine cold load: ``engine.load_adapter(name)`` + ``switch_adapter(name)`` after
     ``unload_adapter(name)`` (validation, sha256, injection);
   * plain peft on a separate transformers copy of the model (loaded from
     ``engine.get_model_info()["weights_path"]``): ``PeftModel.load_adapter(folder, name)`` +
     ``set_adapter(name)``, and ``set_adapter`` alone between two loaded adapters;
   * reloading everything: ``AutoModelForCausalLM.from_pretrained(weights_path)`` +
     ``PeftModel.from_pretrained(model, folder)``.
2. Decode tokens/s, 64 new tokens of a long answer: base (``adapter=None``) vs one unmerged adapter
   (``adapter=name``) vs the same adapter merged into the weights (peft ``merge_adapter()``),
   interleaved rounds. Target: unmerged costs at most 5% more time per token than base.
3. A batch of 8 prompts over 4 adapters (2 each) with ``engine.generate_batch(prompts,
   adapters=[...])`` vs the same 8 one by one with ``engine.generate(prompt, adapter=...)``, greedy,
   same ``max_new_tokens``; the outputs are compared. Target: batch at least 3x faster.

Run ``python benchmarks/bench_adapters.py --help`` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.offline_environment()  # never touch the network

from adapters_batch import measure_batch, report_batch  # noqa: E402
from adapters_common import DEMO_ADAPTERS, prepare_store  # noqa: E402
from adapters_decode import measure_decode, pick_decode_adapter, report_decode  # noqa: E402
from adapters_switch import measure_switch, report_switch  # noqa: E402
from bench_generate import DEFAULT_PROMPT  # noqa: E402
from probes import GenerateProbe  # noqa: E402

REPO_ROOT = harness.REPO_ROOT
DEFAULT_OUT = harness.RESULTS_DIR / "adapters.json"
MEASUREMENTS = ("switch", "decode", "batch")
QUICK = {"switch_rounds": 1, "switch_inner": 5, "switch_generate_pairs": 1, "decode_runs": 1, "max_new_tokens": 4,
         "batch_runs": 1, "batch_max_new_tokens": 4, "cache_check_runs": 1}


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_adapters.py",
        description=(
            "Measure adapter switch latency (engine vs plain peft vs full reload), the decode cost of an "
            "unmerged/merged LoRA adapter against the base model, and a mixed-adapter batch against the "
            "same prompts one by one. Prints tables and writes JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS),
                        help="run only these measurements")
    parser.add_argument("--model", default="default", help="engine model_id ('default' is SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default=None, help="engine device; None keeps the configured one ('auto')")
    parser.add_argument("--source-adapters", type=Path, default=REPO_ROOT / "adapters",
                        help="store to copy the demo adapters from (only read)")
    parser.add_argument("--adapters", nargs=3, default=list(DEMO_ADAPTERS), metavar="NAME",
                        help="the three task adapters; their prompts come from data/demo/NAME/test.jsonl")
    parser.add_argument("--fourth-adapter", choices=("copy", "random"), default="copy",
                        help="copy: the first adapter imported again under the name '<first>_copy' "
                        "(AdapterManager.import_peft); random: create_adapter(layers='middle', rank=16, alpha=32) "
                        "with randomly initialised B matrices, saved to the scratch store")
    parser.add_argument("--synthetic", action="store_true",
                        help="do not use the demo adapters: create all adapters with create_adapter and random "
                        "B matrices (for trying the script when adapters/ is empty; outputs are then meaningless)")
    parser.add_argument("--cache-size", type=int, default=4,
                        help="engine adapters.cache_size (the configured default is 3, fewer than the 4 adapters "
                        "used here: one-by-one requests cycling over 4 adapters would then reload one from disk "
                        "on every call)")
    # 1. switch
    parser.add_argument("--switch-rounds", type=int, default=7, help="switch measurement: interleaved rounds")
    parser.add_argument("--switch-inner", type=int, default=50,
                        help="switch measurement: calls per round of the sub-millisecond operations "
                        "(switch_adapter, activation, peft set_adapter)")
    parser.add_argument("--switch-generate-pairs", type=int, default=3,
                        help="switch measurement: (switch, same) generate(max_new_tokens=1) pairs per adapter per round")
    # 2. decode
    parser.add_argument("--decode-runs", type=int, default=5, help="decode measurement: kept interleaved rounds (after one warm-up per side)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="decode measurement: new tokens per call")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="decode measurement: prompt with a long answer")
    parser.add_argument("--decode-adapter", default=None,
                        help="decode measurement: adapter to run unmerged and merged (default: the second of --adapters)")
    parser.add_argument("--decode-target", type=float, default=5.0, help="maximum accepted decode cost of an unmerged adapter vs base, percent")
    # 3. batch
    parser.add_argument("--batch-runs", type=int, default=5, help="batch measurement: kept interleaved rounds (after one warm-up per side)")
    parser.add_argument("--batch-max-new-tokens", type=int, default=32, help="batch measurement: max_new_tokens of every request")
    parser.add_argument("--cache-check-runs", type=int, default=2,
                        help="batch measurement: afterwards, this many extra rounds of both sides with cache_size=3 "
                        "(the configured default, fewer than the 4 adapters) counting reloads from disk (0: skip)")
    parser.add_argument("--no-long-workload", action="store_true",
                        help="batch measurement: leave out the diagnostic workload of 8 open prompts with long answers")
    parser.add_argument("--batch-target", type=float, default=3.0, help="minimum accepted speedup of generate_batch over one by one")
    # noise, output
    parser.add_argument("--update", action="store_true",
                        help="keep the measurements of an existing --out file that this run does not redo (with --only); "
                        "each measurement records its own date and command")
    parser.add_argument("--fail-on-target", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the benchmark, profile one unmerged and one base decode call, one batch call and "
                        "one one-by-one pass (torch.profiler: top N operators by self CPU time; cProfile: top N "
                        "functions by cumulative and own time) (0: off)")
    harness.add_common_args(parser, default_out=DEFAULT_OUT, contention_threshold=0.15, max_redo=10)
    args = harness.parse_with_quick(parser, argv, QUICK, name="adapters")
    for name in ("switch_rounds", "switch_inner", "switch_generate_pairs", "decode_runs", "max_new_tokens",
                 "batch_runs", "batch_max_new_tokens", "cache_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# -- report -------------------------------------------------------------------------------------------------
def summary_lines(result: dict[str, Any]) -> list[tuple[str, bool | None]]:
    lines: list[tuple[str, bool | None]] = []
    s, d, bt = result.get("switch"), result.get("decode"), result.get("batch")
    if s:
        st = s["stats"]
        lines.append((f"switch: engine {s['engine_switch_ms']:.3f} ms | plain peft load_adapter+set "
                      f"{st['peft_load_adapter_and_set']['median_ms']:.1f} ms "
                      f"({s['ratios']['peft_load_adapter_and_set_over_engine_switch']:.0f}x) | full reload "
                      f"{st['full_reload']['median_ms']:.0f} ms ({s['ratios']['full_reload_over_engine_switch']:.0f}x)", None))
    if d:
        c = d["cost_percent"]
        lines.append((f"decode: base {d['sides']['base']['median_tokens_per_s']:.2f} | unmerged "
                      f"{d['sides']['unmerged']['median_tokens_per_s']:.2f} | merged {d['sides']['merged']['median_tokens_per_s']:.2f} tok/s; "
                      f"unmerged cost {c['unmerged_vs_base']:+.2f}% (target <= {d['target_percent']:g}%) -> "
                      f"{'MET' if d['target_met'] else 'MISSED'}", d["target_met"]))
    if bt:
        lines.append((f"batch, {bt['max_new_tokens']} tokens per answer (ignore_eos): generate_batch "
                      f"{bt['sides']['batch_fixed']['median_seconds']:.3f} s vs one by one "
                      f"{bt['sides']['one_by_one_fixed']['median_seconds']:.3f} s; speedup {bt['speedup']:.2f}x "
                      f"(target >= {bt['target_speedup']:g}x) -> {'MET' if bt['target_met'] else 'MISSED'}; outputs "
                      f"{'identical' if bt['outputs_identical'] else 'DIFFER (' + str(len(bt['mismatches'])) + ')'}", bt["target_met"]))
        w = bt["workloads"]["tasks"]
        lines.append((f"batch, natural stops ({min(bt['per_prompt_tokens']['one_by_one'])}-"
                      f"{max(bt['per_prompt_tokens']['one_by_one'])} tokens per answer): generate_batch "
                      f"{bt['sides']['batch']['median_seconds']:.3f} s vs one by one {bt['sides']['one_by_one']['median_seconds']:.3f} s; "
                      f"speedup {w['speedup']:.2f}x; outputs {'identical' if w['outputs_identical'] else 'DIFFER'}", None))
        if "long" in bt["workloads"]:
            w = bt["workloads"]["long"]
            lines.append((f"batch, long-answer prompts (diagnostic): generate_batch {bt['sides']['batch_long']['median_seconds']:.3f} s "
                          f"vs one by one {bt['sides']['one_by_one_long']['median_seconds']:.3f} s; speedup {w['speedup']:.2f}x; "
                          f"outputs {'identical' if w['outputs_identical'] else 'DIFFER (' + str(len(w['mismatches'])) + ')'}", None))
    return lines


def print_summary(result: dict[str, Any]) -> None:
    harness.print_notes(summary_lines(result))


def profile_calls(engine: Any, args: argparse.Namespace, result: dict[str, Any], names: list[str], top: int) -> None:
    calls: list[tuple[str, Callable[[], Any]]] = []
    if "decode" in result:
        adapter = result["decode"]["adapter"]
        calls.append(("decode unmerged", lambda: engine.generate(args.prompt, adapter=adapter, temperature=0,
                                                                  max_new_tokens=args.max_new_tokens)))
        calls.append(("decode base", lambda: engine.generate(args.prompt, adapter=None, temperature=0,
                                                              max_new_tokens=args.max_new_tokens)))
    if "batch" in result:
        prompts, adapters = result["batch"]["prompts"], result["batch"]["adapters"]
        n = args.batch_max_new_tokens
        calls.append(("batch generate_batch", lambda: engine.generate_batch(prompts, adapters=adapters, temperature=0, max_new_tokens=n)))
        calls.append(("batch one by one", lambda: [engine.generate(p, adapter=a, temperature=0, max_new_tokens=n)
                                                   for p, a in zip(prompts, adapters)]))
    from torch.profiler import ProfilerActivity, profile

    for name, call in calls:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        print(f"\n===== torch.profiler: {name}, top {top} operators by self CPU time =====")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
        reports = harness.cprofile_report(call, top, sorts=("cumulative", "tottime"))
        print(f"\n===== cProfile: {name}, top {top} by cumulative time =====")
        print(reports["cumulative"])
        print(f"\n===== cProfile: {name}, top {top} by own time =====")
        print(reports["tottime"])


# -- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    from adaptrix_core.engine import ModularAdaptrixEngine

    started_at = _dt.datetime.now(_dt.timezone.utc)
    store = Path(tempfile.mkdtemp(prefix="adaptrix-bench-adapters-"))
    try:
        def engine_factory() -> Any:
            return ModularAdaptrixEngine(model_id=args.model, device=args.device, adapters_dir=str(store),
                                         config={"adapters": {"cache_size": args.cache_size}})

        engine, names, provenance = prepare_store(args, store, engine_factory)
        info = engine.get_model_info()
        probe = GenerateProbe(engine)
        print(f"model {info['base_model']} ({info['dtype']}, {info['device']}), adapters {names} in scratch store {store}",
              file=sys.stderr)
        result: dict[str, Any] = {}
        if "switch" in args.only:
            result["switch"] = measure_switch(args, engine, names, store, info)
            report_switch(result["switch"])
        if "decode" in args.only:
            adapter = args.decode_adapter or pick_decode_adapter(engine, names, args, probe)
            result["decode"] = measure_decode(args, engine, adapter, probe)
            report_decode(result["decode"])
        if "batch" in args.only:
            result["batch"] = measure_batch(args, engine, names, probe)
            report_batch(result["batch"])
        print_summary(result)

        stamp = {"date": started_at.isoformat(timespec="seconds"), "command": harness.command_line()}
        for part in result.values():
            part.update(measured=stamp)
        if args.update and args.out.is_file():
            previous = json.loads(args.out.read_text(encoding="utf-8"))
            for key in MEASUREMENTS:
                if key not in result and key in previous:
                    result[key] = previous[key]
            result = {key: result[key] for key in MEASUREMENTS if key in result}
        lora_config = json.loads((store / names[0] / "adapter_config.json").read_text())
        doc = {
            "benchmark": "adapters: switch latency, decode cost of LoRA (base/unmerged/merged), mixed-adapter batch vs one by one",
            "date": started_at.isoformat(timespec="seconds"),
            "command": harness.command_line(),
            "machine": harness.machine_info(),
            "model": info,
            "settings": {
                "adapters": names,
                "adapter_provenance": provenance,
                "lora": {k: lora_config.get(k) for k in ("r", "lora_alpha", "target_modules", "layers_to_transform")},
                "cache_size": args.cache_size,
                "decoding": "greedy (temperature=0)",
                "switch": {"rounds": args.switch_rounds, "inner_calls": args.switch_inner,
                           "generate1_pairs_per_adapter_per_round": args.switch_generate_pairs,
                           "plain_side": "independent AutoModelForCausalLM.from_pretrained(weights_path) + PeftModel"},
                "decode": {"kept_rounds": args.decode_runs, "warmup_per_side": 1, "max_new_tokens": args.max_new_tokens,
                           "order": "interleaved rounds: base, unmerged, merged",
                           "merged_call": ("peft set_adapter(adapter); merge_adapter(); engine.generate(prompt, adapter=None) "
                                           "with PeftAdapters.activated replaced for that call by a context yielding the "
                                           "merged peft model as is; unmerge_adapter() and exact restore of the base weights "
                                           "after the call (merge/unmerge time not in tok/s)")},
                "batch": {"kept_rounds": args.batch_runs, "warmup_per_side": 1, "max_new_tokens": args.batch_max_new_tokens,
                          "order": "interleaved rounds: batch, one_by_one"},
                "contention_threshold_cores": args.contention_threshold,
                "max_redo": args.max_redo,
            },
            **result,
            "summary": [line for line, _ in summary_lines(result)],
            "targets_met": {k: result[k]["target_met"] for k in ("decode", "batch") if k in result},
        }
        print(f"wrote {harness.write_results(args.out, doc)}", file=sys.stderr)
        if args.profile:
            profile_calls(engine, args, result, names, args.profile)
        engine.cleanup()
    finally:
        shutil.rmtree(store, ignore_errors=True)
    missed = [k for k, met in doc["targets_met"].items() if not met]
    return 1 if args.fail_on_target and missed else 0


if __name__ == "__main__":
    sys.exit(main())
