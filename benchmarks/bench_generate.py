#!/usr/bin/env python
"""Benchmark ``ModularAdaptrixEngine().generate()`` against plain transformers ``model.generate``.

Both sides run the same weights (the engine's default model, SmolLM2-135M-Instruct, unless
``--model`` says otherwise), the same chat-templated prompt, greedy decoding, the same end-of-turn
token ids and the same number of new tokens, in one process with the same torch thread count.

* Engine side: ``engine.generate(prompt, temperature=0, max_new_tokens=N)``, text in, text out.
* Plain side: a second, independent copy of the model and tokenizer loaded with
  ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` from the folder the engine loaded
  (for a GGUF model, the converted safetensors folder the engine caches; the weights are checked
  to be bit-identical to the engine's); the timed region is what a plain transformers user writes
  for the same job: ``apply_chat_template`` to text, tokenize it once with
  ``add_special_tokens=False`` (as the engine does), ``model.generate(do_sample=False,
  eos_token_id=..., pad_token_id=...)``, decode the new tokens. The ``model.generate`` call alone
  is timed too.
* Plain + inference_mode side (unless ``--no-inference-mode-baseline``): the same, with
  ``model.generate`` inside ``torch.inference_mode()`` like the engine's backend. It isolates the
  engine's own overhead from the inference_mode-vs-no_grad difference (a few percent on CPU).

Runs are interleaved in rounds (engine, plain, plain+inference_mode, engine, ...) after one untimed
warm-up each. A round during which other processes used the CPU (measured from /proc/stat) is
discarded and redone (``--contention-threshold``, ``--max-redo``). The figure of merit is median
tokens/s (actual new tokens / wall seconds) on each side; the target is that the engine costs at
most ``--target`` percent (default 3) more time per token than plain transformers. Both outputs'
text must be identical (greedy), else the exit status is 2.

Run ``python benchmarks/bench_generate.py --help`` for the options; see benchmarks/README.md.
"""


from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from probes import GenerateProbe  # noqa: E402

# Never touch the network: the engine itself never downloads, and the plain side must not either.
harness.offline_environment()

DEFAULT_OUT = harness.RESULTS_DIR / "generate.json"
DEFAULT_PROMPT = (
    "Write a detailed, multi-paragraph essay about the history of the Roman Empire, "
    "from its founding to its fall."
)
QUICK = {"runs": 1, "max_new_tokens": 8}


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_generate.py",
        description=(
            "Compare ModularAdaptrixEngine().generate() with plain transformers model.generate on the "
            "same weights: greedy, same chat-templated prompt, same EOS ids, same number of new tokens, "
            "interleaved runs. Prints a table and writes JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side, i.e. kept rounds (after one warm-up per side)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per run (both sides)")
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT,
        help="user prompt; it must make the model answer at length so both sides generate exactly "
        "--max-new-tokens tokens",
    )
    parser.add_argument("--model", default="default", help="engine model_id ('default' is SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default=None, help="engine device; None keeps the configured one ('auto')")
    parser.add_argument("--target", type=float, default=3.0, help="maximum accepted engine overhead, percent")
    parser.add_argument(
        "--reuse-engine-objects", action="store_true",
        help="plain side reuses the engine's loaded model/tokenizer objects instead of loading an "
        "independent copy from the same folder",
    )
    parser.add_argument(
        "--no-inference-mode-baseline", action="store_true",
        help="leave out the third side, plain transformers with model.generate inside torch.inference_mode() "
        "(the engine's backend uses inference_mode; plain generate() only no_grad)",
    )
    parser.add_argument("--fail-on-target", action="store_true", help="exit with status 1 when the target is missed")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="after the benchmark, cProfile one more call per side and print the top N Python-level "
        "functions (Adaptrix, transformers generate loop, tokenizers) by cumulative time (0: off)",
    )
    harness.add_common_args(parser, default_out=DEFAULT_OUT, contention_threshold=0.15, max_redo=10)
    args = harness.parse_with_quick(parser, argv, QUICK, name="generate")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    return args


# -- the sides ------------------------------------------------------------------------------------
def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def plain_folder(engine: Any) -> Path:
    """The folder the engine's backend loaded its weights from (the converted copy for a GGUF model)."""
    return Path(engine.get_model_info()["weights_path"])


def eos_ids_for(model: Any, tokenizer: Any, end_of_turn_tokens: tuple[str, ...]) -> list[int]:
    """The stop ids, built the plain way: generation config EOS, tokenizer EOS, the family's end-of-turn tokens."""
    ids: list[int] = []
    for value in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[token] for token in end_of_turn_tokens if token in vocab)
    return list(dict.fromkeys(ids))


class PlainSide:
    """Plain transformers: chat template -> tokenize once -> ``model.generate`` -> decode.

    With ``inference_mode`` the ``model.generate`` call runs inside ``torch.inference_mode()``, as the
    engine's backend does; without it, it runs as plain user code does (``generate`` itself only
    applies ``torch.no_grad()``).
    """

    def __init__(self, model: Any, tokenizer: Any, device: Any, eos_ids: list[int], pad_id: int,
                 inference_mode: bool = False):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.inference_mode = inference_mode

    def run(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        import torch

        _sync(self.device)
        started = time.perf_counter()
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        generate_started = time.perf_counter()
        with torch.inference_mode() if self.inference_mode else contextlib.nullcontext():
            output = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
            )
        _sync(self.device)
        generate_s = time.perf_counter() - generate_started
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        end_ids = {*self.eos_ids, self.pad_id}
        kept = next((new[:i] for i, token in enumerate(new) if token in end_ids), new)
        answer = self.tokenizer.decode(kept, skip_special_tokens=True)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "generate_s": generate_s, "new_tokens": len(new),
                "prompt_tokens": int(inputs["input_ids"].shape[1]), "text": answer}


class EngineSide:
    """``engine.generate``, observed through a ``GenerateProbe``: the backend's ``generate`` gives the
    real token counts, the backend model's ``generate`` the time of the transformers call alone."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.device = engine.backend.device
        self.probe = GenerateProbe(engine, sync=lambda: _sync(self.device))
        self.probe.time_generate_of(engine.backend.model)

    def run(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        self.probe.reset()
        _sync(self.device)
        started = time.perf_counter()
        text = self.engine.generate(prompt, temperature=0, max_new_tokens=max_new_tokens)
        _sync(self.device)
        seconds = time.perf_counter() - started
        (completion,) = self.probe.completions
        return {"seconds": seconds, "generate_s": self.probe.generate_s[-1], "new_tokens": completion.completion_tokens,
                "prompt_tokens": completion.prompt_tokens, "finish_reason": completion.finish_reason,
                "text": text}


# -- report ----------------------------------------------------------------------------------------
SIDE_LABELS = {
    "engine": "engine.generate",
    "plain": "plain transformers",
    "plain_inference_mode": "plain + torch.inference_mode",
}


def _overhead(engine_tps: float, other_tps: float) -> float:
    """Extra time per token the engine costs against ``other``, in percent (negative: engine faster)."""
    return harness.time_cost_percent(other_tps, engine_tps)


def summarize(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Per-side medians of the kept ``runs`` and the engine's overhead against every other side."""
    groups = harness.by_side(runs)
    sides: dict[str, dict[str, Any]] = {}
    for name, side_runs in groups.items():
        sides[name] = {
            "runs": len(side_runs),
            "median_tokens_per_s": harness.median(r["tokens_per_s"] for r in side_runs),
            "median_seconds": harness.median(r["seconds"] for r in side_runs),
            "min_seconds": min(r["seconds"] for r in side_runs),
            "max_seconds": max(r["seconds"] for r in side_runs),
            # Everything around the transformers call: the engine's validation, sampling, rendering,
            # tokenizing, GenerationConfig, decoding; plain side: template, tokenizing, decoding.
            "median_ms_outside_model_generate": harness.median(
                harness.ms(r["seconds"] - r["generate_s"]) for r in side_runs),
            "median_generate_only_tokens_per_s": harness.median(r["new_tokens"] / r["generate_s"] for r in side_runs),
        }
    engine_tps = sides["engine"]["median_tokens_per_s"]
    comparisons: dict[str, dict[str, Any]] = {}
    for name in (n for n in sides if n != "engine"):
        each = harness.paired(runs, "engine", name, lambda e, o: _overhead(e["tokens_per_s"], o["tokens_per_s"]))
        comparisons[name] = {
            "ratio_engine_over_side": engine_tps / sides[name]["median_tokens_per_s"],
            "overhead_percent": _overhead(engine_tps, sides[name]["median_tokens_per_s"]),
            "generate_only_overhead_percent": _overhead(
                sides["engine"]["median_generate_only_tokens_per_s"], sides[name]["median_generate_only_tokens_per_s"]),
            "paired_overhead_percent_median": harness.median(each),
            "paired_overhead_percent_each": each,
        }
    headline = comparisons["plain"]
    return {
        "engine_median_tokens_per_s": engine_tps,
        "plain_median_tokens_per_s": sides["plain"]["median_tokens_per_s"],
        "ratio_engine_over_plain": headline["ratio_engine_over_side"],
        "overhead_percent": headline["overhead_percent"],
        "target_overhead_percent": target,
        "target_met": headline["overhead_percent"] <= target,
        "target_met_vs_every_baseline": all(c["overhead_percent"] <= target for c in comparisons.values()),
        "sides": sides,
        "engine_vs": comparisons,
    }


def report_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for name, c in summary["engine_vs"].items():
        lines.append(
            f"engine vs {SIDE_LABELS[name]}: ratio {c['ratio_engine_over_side']:.4f}, "
            f"overhead {c['overhead_percent']:+.2f}% (paired median {c['paired_overhead_percent_median']:+.2f}%; "
            f"model.generate calls alone {c['generate_only_overhead_percent']:+.2f}%)"
        )
    if summary.get("rounds_discarded_for_contention"):
        lines.append(f"{summary['rounds_discarded_for_contention']} round(s) discarded and redone: other "
                     "processes were using the CPU during them")
    if summary.get("kept_runs_still_contended"):
        lines.append(f"WARNING: {summary['kept_runs_still_contended']} kept run(s) were contended by other "
                     "processes (--max-redo exhausted); the figures are unreliable")
    verdict = "MET" if summary["target_met"] else "MISSED"
    lines.append(f"target: engine overhead vs plain transformers <= {summary['target_overhead_percent']:g}% "
                 f"-> {verdict} ({summary['overhead_percent']:+.2f}%)")
    return lines


def print_report(summary: dict[str, Any], runs: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    title = (f"{settings['model']} | {settings['max_new_tokens']} new tokens | greedy | "
             f"{settings['runs']} interleaved runs/side | device {settings['device']} | "
             f"{settings['torch_threads']} torch threads")
    header = ("side (text in -> text out)", "median tok/s", "median s/run", "model.generate alone tok/s",
              "ms outside model.generate", "runs (tok/s)")
    rows = []
    for name, figures in summary["sides"].items():
        each = " ".join(f"{r['tokens_per_s']:.2f}" for r in runs if r["side"] == name)
        rows.append((SIDE_LABELS[name], f"{figures['median_tokens_per_s']:.2f}", f"{figures['median_seconds']:.3f}",
                     f"{figures['median_generate_only_tokens_per_s']:.2f}",
                     f"{figures['median_ms_outside_model_generate']:.2f}", each))
    lines = report_lines(summary)
    harness.print_table(title, header, rows, [*lines[:-1], (lines[-1], summary["target_met"])], left=(0, -1))


def profile_calls(sides: list[harness.Side], top: int) -> None:
    # Only the Python layers around the forward passes: Adaptrix, transformers' generate loop,
    # generation config, tokenizers and this script's side wrappers.
    pattern = r"adaptrix_|bench_generate|probes|generation/|tokenization_|configuration_utils"
    for side in sides:
        report = harness.cprofile_report(side.run, top, restrict=pattern)["cumulative"]
        print(f"\n===== cProfile: {side.name}, one call, top {top} by cumulative time (Python layers only) =====")
        print(report)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()  # one-time notices would otherwise land in a timed run
    from adaptrix_core.engine import ModularAdaptrixEngine

    started_at = _dt.datetime.now(_dt.timezone.utc)
    engine = ModularAdaptrixEngine(model_id=args.model, device=args.device).initialize()
    info = engine.get_model_info()
    backend = engine.backend
    device = backend.device
    family_end_tokens = tuple(engine.family.chat.end_of_turn_tokens)

    if args.reuse_engine_objects:
        folder = None
        tokenizer, model = backend.tokenizer, backend.model
        plain_source = "reused the engine's loaded model and tokenizer objects (engine.backend.model/.tokenizer)"
    else:
        folder = plain_folder(engine)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=getattr(torch, info["dtype"]), local_files_only=True
        ).to(device).eval()
        plain_source = f"independent copy loaded with AutoTokenizer/AutoModelForCausalLM.from_pretrained({str(folder)!r})"
        engine_state = backend.model.state_dict()
        plain_state = model.state_dict()
        same = engine_state.keys() == plain_state.keys() and all(
            torch.equal(engine_state[k], plain_state[k]) for k in engine_state
        )
        if not same:
            print(f"error: the weights loaded from {folder} differ from the engine's", file=sys.stderr)
            return 2
        del engine_state, plain_state

    eos_ids = eos_ids_for(model, tokenizer, family_end_tokens)
    engine_eos = list(backend.eos_token_ids)
    if eos_ids != engine_eos:
        print(f"error: plain EOS ids {eos_ids} differ from the engine's {engine_eos}", file=sys.stderr)
        return 2
    # The engine's backend pads with the tokenizer's pad token, else its EOS token; do the same.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    side_objects: dict[str, Any] = {
        "engine": EngineSide(engine),
        "plain": PlainSide(model, tokenizer, device, eos_ids, pad_id),
    }
    if not args.no_inference_mode_baseline:
        side_objects["plain_inference_mode"] = PlainSide(model, tokenizer, device, eos_ids, pad_id, inference_mode=True)

    def checked(name: str) -> dict[str, Any]:
        result = side_objects[name].run(args.prompt, args.max_new_tokens)
        if result["new_tokens"] != args.max_new_tokens:
            raise SystemExit(
                f"error: the {name} side generated {result['new_tokens']} tokens, not {args.max_new_tokens}; "
                "pick a --prompt that makes the model answer at greater length"
            )
        result["tokens_per_s"] = result["new_tokens"] / result["seconds"]
        return result

    sides = [harness.Side(name, lambda name=name: checked(name), SIDE_LABELS[name]) for name in side_objects]
    print(f"model {info['base_model']} from {info['source']} ({info['dtype']}, {info['device']}); "
          f"plain side: {plain_source}", file=sys.stderr)
    warmup = {side.name: side.run() for side in sides}
    prompt_lengths = {name: w["prompt_tokens"] for name, w in warmup.items()}
    if len(set(prompt_lengths.values())) != 1:
        print(f"error: prompt lengths differ: {prompt_lengths}", file=sys.stderr)
        return 2

    rounds = harness.interleaved_rounds(
        sides, args.runs, contention_threshold=args.contention_threshold, max_redo=args.max_redo, side_width=20,
        describe=lambda r: f"{r['seconds']:.3f} s  {r['tokens_per_s']:6.2f} tok/s")
    runs, kept = rounds.runs, rounds.kept

    texts = {r["text"] for r in runs} | {w["text"] for w in warmup.values()}
    identical = len(texts) == 1
    summary = summarize(kept, args.target)
    summary["rounds_discarded_for_contention"] = rounds.redone
    summary["kept_runs_still_contended"] = rounds.still_contended
    settings = {
        "model": info["base_model"], "max_new_tokens": args.max_new_tokens, "runs": args.runs,
        "device": info["device"], "torch_threads": torch.get_num_threads(),
    }
    print_report(summary, kept, settings)
    if not identical:
        print("error: the engine and plain transformers produced different text (greedy should match)", file=sys.stderr)

    result_doc = {
        "benchmark": "generate: ModularAdaptrixEngine().generate vs plain transformers model.generate",
        "date": started_at.isoformat(timespec="seconds"),
        "command": harness.command_line(),
        "machine": harness.machine_info(),
        "model": info,
        "settings": {
            "prompt": args.prompt,
            "max_new_tokens": args.max_new_tokens,
            "runs_per_side": args.runs,
            "warmup_runs_per_side": 1,
            "order": "interleaved rounds: " + ", ".join(side_objects) + ", then again, ...",
            "sides": {name: SIDE_LABELS[name] for name in side_objects},
            "decoding": "greedy (engine temperature=0, plain do_sample=False)",
            "engine_call": f"engine.generate(prompt, temperature=0, max_new_tokens={args.max_new_tokens})",
            "plain_call": ("apply_chat_template(tokenize=False, add_generation_prompt=True) -> "
                           "tokenizer(text, add_special_tokens=False) -> model.generate(do_sample=False, "
                           "eos_token_id=..., pad_token_id=...) -> decode"),
            "plain_source": plain_source,
            "plain_folder": None if folder is None else str(folder),
            "weights_identical": True,
            "prompt_tokens": warmup["plain"]["prompt_tokens"],
            "eos_token_ids": eos_ids,
            "pad_token_id": pad_id,
            "target_overhead_percent": args.target,
            "contention_threshold_cores": args.contention_threshold,
            "max_redo": args.max_redo,
        },
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "text"} for r in runs],
        "outputs": {**{name: w["text"] for name, w in warmup.items()}, "identical_across_all_runs": identical},
    }
    print(f"wrote {harness.write_results(args.out, result_doc)}", file=sys.stderr)

    if args.profile:
        profile_calls(sides, args.profile)
    engine.cleanup()
    if not identical:
        return 2
    return 1 if args.fail_on_target and not summary["target_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
