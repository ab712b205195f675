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
import contextlib
import datetime as _dt
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

# Never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import DEFAULT_PROMPT, ContentionMeter, machine_facts  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "adapters.json"
DEMO_DATA = REPO_ROOT / "data" / "demo"
DEMO_ADAPTERS = ("arithmetic", "extraction", "dates")
# Prompts for the fourth adapter, which is a renamed copy of a demo adapter (no task of its own).
EXTRA_PROMPTS = (
    "Give three tips for keeping a small vegetable garden healthy.",
    "Explain in two sentences why the sky looks blue.",
)
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
MEASUREMENTS = ("switch", "decode", "batch")


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
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before loading; None keeps torch's default")
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
    parser.add_argument("--contention-threshold", type=float, default=0.15, metavar="CORES",
                        help="a decode/batch round during which other processes kept more than this many CPU cores "
                        "busy (from /proc/stat) is discarded and redone")
    parser.add_argument("--max-redo", type=int, default=10, help="at most this many contended rounds are redone per measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--update", action="store_true",
                        help="keep the measurements of an existing --out file that this run does not redo (with --only); "
                        "each measurement records its own date and command")
    parser.add_argument("--fail-on-target", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the benchmark, profile one unmerged and one base decode call, one batch call and "
                        "one one-by-one pass (torch.profiler: top N operators by self CPU time; cProfile: top N "
                        "functions by cumulative and own time) (0: off)")
    args = parser.parse_args(argv)
    for name in ("switch_rounds", "switch_inner", "switch_generate_pairs", "decode_runs", "max_new_tokens",
                 "batch_runs", "batch_max_new_tokens", "cache_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


# -- helpers ------------------------------------------------------------------------------------------
def _now() -> float:
    return time.perf_counter()


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _stats_ms(samples_s: list[float]) -> dict[str, Any]:
    ms = [_ms(s) for s in samples_s]
    return {"n": len(ms), "median_ms": _median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "p90_ms": sorted(ms)[min(len(ms) - 1, int(0.9 * len(ms)))]}


def _read_prompts(task: str, count: int) -> list[str]:
    path = DEMO_DATA / task / "test.jsonl"
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
            if len(prompts) == count:
                break
    if len(prompts) < count:
        raise SystemExit(f"error: {path} has fewer than {count} prompts")
    return prompts


class TokenCounter:
    """Pass-through wrappers (instance attributes, about a microsecond each) on the backend's
    ``generate`` (real new-token counts of every completion) and on the peft model's ``generate``
    (time of the transformers call alone)."""

    def __init__(self, engine: Any):
        self.backend = engine.backend
        self.completions: list[Any] = []
        self.generate_s: list[float] = []
        backend_generate = self.backend.generate

        def counting_generate(*args: Any, **kwargs: Any) -> Any:
            completions = backend_generate(*args, **kwargs)
            self.completions.extend(completions)
            return completions

        self.backend.generate = counting_generate
        self._wrapped_peft = None

    def wrap_peft(self) -> None:
        """(Re)wrap the peft model's generate; call after the peft model exists."""
        peft = self.backend.lora.peft
        if peft is None or peft is self._wrapped_peft:
            return
        model_generate = peft.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            started = _now()
            output = model_generate(*args, **kwargs)
            self.generate_s.append(_now() - started)
            return output

        peft.generate = timed_generate
        self._wrapped_peft = peft

    def reset(self) -> None:
        self.completions.clear()
        self.generate_s.clear()

    @property
    def new_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)


def lora_layers(peft: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in peft.modules() if isinstance(m, LoraLayer)]


# -- setup: scratch store and adapters -------------------------------------------------------------------
def randomise_b(engine: Any, name: str, seed: int) -> None:
    """Give a freshly created adapter non-zero B matrices (peft initialises B to 0) so it changes outputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in zip(
            [n for n, _ in engine.backend.lora.peft.named_parameters()
             if f".{engine.backend.lora.internal(name)}." in f"{n}." and "lora_" in n],
            engine.backend.lora.parameters(name),
        ):
            if "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def prepare_store(args: argparse.Namespace, store: Path, engine_factory: Callable[[], Any]) -> tuple[Any, list[str], dict[str, str]]:
    """Fill the scratch store; return (engine, the 4 adapter names, how each adapter was made)."""
    from adaptrix_core.adapter_store import AdapterManager

    names = list(args.adapters)
    provenance: dict[str, str] = {}
    source = AdapterManager(args.source_adapters)
    scratch = AdapterManager(store)
    if not args.synthetic:
        missing = [n for n in names if n not in source.names()]
        if missing:
            raise SystemExit(
                f"error: adapters {missing} are not in {args.source_adapters} (train them with "
                "scripts/train_demo_adapters.py, or pass --synthetic to try the script with random adapters)"
            )
        for name in names:
            source.export(name, store / name)  # validates, copies the PEFT folder + adaptrix.json
            provenance[name] = f"demo adapter copied from {args.source_adapters / name}"
    fourth = f"{names[0]}_copy" if args.fourth_adapter == "copy" else "random4"
    if args.fourth_adapter == "copy" and not args.synthetic:
        scratch.import_peft(store / names[0], fourth,
                            description=f"benchmark copy of {names[0]} (same weights, another name)")
        provenance[fourth] = f"copy of {names[0]} imported with AdapterManager.import_peft under another name"
    engine = engine_factory()
    engine.initialize()
    to_create = ([*names] if args.synthetic else []) + ([fourth] if args.fourth_adapter == "random" or args.synthetic else [])
    for index, name in enumerate(to_create):
        engine.create_adapter(name, layers="middle", rank=16, alpha=32)
        randomise_b(engine, name, seed=1000 + index)
        engine.save_adapter(name, overwrite=True, description="benchmark adapter with random B (untrained)")
        engine.unload_adapter(name)
        provenance[name] = ("create_adapter(layers='middle', rank=16, alpha=32) with B ~ N(0, 0.02^2) "
                            "(seeded), saved to the scratch store")
    return engine, [*names, fourth], provenance


# -- 1. switch latency -------------------------------------------------------------------------------------
def measure_switch(args: argparse.Namespace, engine: Any, names: list[str], store: Path, info: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a, b = names[0], names[1]
    folder_a, folder_b = store / a, store / b
    weights_path = info["weights_path"]
    dtype = getattr(torch, info["dtype"])
    device = engine.backend.device
    lora = engine.backend.lora
    prompt = _read_prompts(a, 1)[0]

    engine.preload([a, b])
    samples: dict[str, list[float]] = {k: [] for k in (
        "engine_switch_adapter", "engine_activation", "engine_generate1_after_switch", "engine_generate1_same",
        "engine_switch_plus_generate1_after_switch", "engine_switch_plus_generate1_same",
        "engine_generate1_base", "engine_cold_load_and_switch", "peft_set_adapter_loaded",
        "peft_load_adapter_and_set", "full_reload")}

    print("switch: loading a plain transformers + peft copy of the model ...", file=sys.stderr)
    plain_base = AutoModelForCausalLM.from_pretrained(weights_path, dtype=dtype, local_files_only=True).to(device).eval()
    plain = PeftModel.from_pretrained(plain_base, str(folder_a), adapter_name="a").eval()
    plain.load_adapter(str(folder_b), adapter_name="b")  # for set_adapter between two loaded adapters

    def gen1(adapter: Any = contextlib.nullcontext) -> float:
        started = _now()
        if adapter is contextlib.nullcontext:
            engine.generate(prompt, temperature=0, max_new_tokens=1)  # the active adapter
        else:
            engine.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=1)
        return _now() - started

    # warm-up
    engine.switch_adapter(b)
    gen1()
    gen1(None)
    kept_rounds = redone = round_no = 0
    contention: list[dict[str, Any]] = []
    while kept_rounds < args.switch_rounds:
        round_no += 1
        rs: dict[str, list[float]] = {k: [] for k in samples}
        with ContentionMeter() as meter:
            gc.collect()
            # (a) switch_adapter alone, alternating between two loaded adapters
            for i in range(args.switch_inner):
                target = a if i % 2 == 0 else b
                started = _now()
                engine.switch_adapter(target)
                rs["engine_switch_adapter"].append(_now() - started)
            # (b) the activation every adapter-named generate runs (peft set_adapter over all LoRA layers)
            for i in range(args.switch_inner):
                target = a if i % 2 == 0 else b
                started = _now()
                with lora.activated([target]):
                    pass
                rs["engine_activation"].append(_now() - started)
            # (c) switch_adapter + generate(max_new_tokens=1) on the active adapter: after a switch vs same adapter
            for _ in range(args.switch_generate_pairs):
                for target in (a, b):  # previous call used the other adapter -> switch, then same
                    for kind in ("after_switch", "same"):
                        started = _now()
                        engine.switch_adapter(target)
                        switched = _now()
                        gen_s = gen1()
                        rs[f"engine_generate1_{kind}"].append(gen_s)
                        rs[f"engine_switch_plus_generate1_{kind}"].append(switched - started + gen_s)
            rs["engine_generate1_base"].append(gen1(None))
            # (d) engine cold load: unload, then load_adapter + switch_adapter (validate, sha256, inject)
            engine.switch_adapter(a)
            engine.unload_adapter(b)
            gc.collect()
            started = _now()
            engine.load_adapter(b)
            engine.switch_adapter(b)
            rs["engine_cold_load_and_switch"].append(_now() - started)
            # (e) plain peft: set_adapter between two loaded adapters
            for i in range(args.switch_inner):
                started = _now()
                plain.set_adapter("a" if i % 2 == 0 else "b")
                rs["peft_set_adapter_loaded"].append(_now() - started)
            # (f) plain peft: load_adapter(folder) + set_adapter (the adapter was not loaded)
            plain.set_adapter("a")
            plain.delete_adapter("b")
            gc.collect()
            started = _now()
            plain.load_adapter(str(folder_b), adapter_name="b")
            plain.set_adapter("b")
            rs["peft_load_adapter_and_set"].append(_now() - started)
            # (g) reload everything: base model from disk + PeftModel.from_pretrained
            gc.collect()
            started = _now()
            model = AutoModelForCausalLM.from_pretrained(weights_path, dtype=dtype, local_files_only=True).to(device).eval()
            reloaded = PeftModel.from_pretrained(model, str(folder_b), adapter_name="b").eval()
            rs["full_reload"].append(_now() - started)
            del model, reloaded
            gc.collect()
        contended = meter.other_cores is not None and meter.other_cores > args.contention_threshold
        discard = contended and redone < args.max_redo
        redone += discard
        kept_rounds += not discard
        contention.append({"round": round_no, "other_processes_cores": meter.other_cores, "discarded": discard})
        if not discard:
            for key, values in rs.items():
                samples[key].extend(values)
        print(f"  switch round {round_no}: switch_adapter {_ms(rs['engine_switch_adapter'][-1]):.3f} ms, "
              f"cold load {_ms(rs['engine_cold_load_and_switch'][-1]):.1f} ms, "
              f"peft load_adapter+set {_ms(rs['peft_load_adapter_and_set'][-1]):.1f} ms, "
              f"full reload {_ms(rs['full_reload'][-1]):.0f} ms  other processes: "
              f"{meter.other_cores if meter.other_cores is None else round(meter.other_cores, 2)} cores"
              f"{'  (contended: round discarded, redone)' if discard else ''}", file=sys.stderr)
    del plain, plain_base
    gc.collect()

    stats = {k: _stats_ms(v) for k, v in samples.items()}
    med = {k: v["median_ms"] for k, v in stats.items()}
    activation_from_generate = med["engine_generate1_after_switch"] - med["engine_generate1_same"]
    # Headline engine switch: switch_adapter + the activation the next generate runs (measured directly;
    # the engine runs it on every adapter-named call, switched or not).
    engine_switch_ms = med["engine_switch_adapter"] + med["engine_activation"]
    return {
        "adapters": [a, b],
        "prompt_for_generate1": prompt,
        "samples_ms": {k: [_ms(s) for s in v] for k, v in samples.items()},
        "rounds_contention": contention,
        "rounds_discarded_for_contention": redone,
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


# -- 2. decode tokens/s ------------------------------------------------------------------------------------
class DecodeSides:
    """base (adapter=None), unmerged (adapter=name) and merged (merge_adapter + the engine's path
    with the activation bypassed), each through ``engine.generate``."""

    def __init__(self, engine: Any, adapter: str, counter: TokenCounter):
        import torch

        self.engine, self.adapter, self.counter = engine, adapter, counter
        self.lora = engine.backend.lora
        engine.load_adapter(adapter)
        counter.wrap_peft()
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
        started = _now()
        self.peft.merge_adapter()
        self.merge_s.append(_now() - started)
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
            started = _now()
            self.peft.unmerge_adapter()
            self.unmerge_s.append(_now() - started)
            with torch.no_grad():
                drift = 0.0
                for layer, weight in zip(self.layers, self.saved):
                    current = layer.get_base_layer().weight
                    drift = max(drift, float((current - weight).abs().max()))
                    current.copy_(weight)
            self.unmerge_drift.append(drift)

    def run(self, side: str, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        self.counter.reset()
        if side == "merged":
            with self._merged():
                started = _now()
                text = self.engine.generate(prompt, adapter=None, temperature=0, max_new_tokens=max_new_tokens)
                seconds = _now() - started
        else:
            adapter = None if side == "base" else self.adapter
            started = _now()
            text = self.engine.generate(prompt, adapter=adapter, temperature=0, max_new_tokens=max_new_tokens)
            seconds = _now() - started
        (completion,) = self.counter.completions
        (generate_s,) = self.counter.generate_s
        return {"seconds": seconds, "generate_s": generate_s, "new_tokens": completion.completion_tokens,
                "prompt_tokens": completion.prompt_tokens, "text": text}


def pick_decode_adapter(engine: Any, names: list[str], args: argparse.Namespace, counter: TokenCounter) -> str:
    """The first adapter (second, third, first, fourth of the list) whose answer to --prompt runs the full
    --max-new-tokens (a task adapter may answer briefly, which would measure a shorter decode)."""
    order = [names[1], names[2], names[0], names[3]]
    for name in order:
        counter.reset()
        engine.generate(args.prompt, adapter=name, temperature=0, max_new_tokens=args.max_new_tokens)
        tokens = counter.completions[-1].completion_tokens
        if tokens == args.max_new_tokens:
            return name
        print(f"decode: adapter {name!r} answers the prompt in {tokens} tokens (< {args.max_new_tokens}); trying the next",
              file=sys.stderr)
    raise SystemExit("error: no adapter answers --prompt at full length; pass another --prompt or --decode-adapter")


DECODE_LABELS = {
    "base": "base: engine.generate(prompt, adapter=None)",
    "unmerged": "unmerged: engine.generate(prompt, adapter=NAME)",
    "merged": "merged: peft merge_adapter(), engine.generate path, activation bypassed",
}


def _rounds(sides: list[str], run: Callable[[str], dict[str, Any]], runs: int, args: argparse.Namespace,
            label: str, describe: Callable[[dict[str, Any]], str]) -> tuple[list[dict[str, Any]], int]:
    """Interleaved rounds (one call per side each); a contended round is discarded and redone."""
    results: list[dict[str, Any]] = []
    kept = redone = round_no = 0
    while kept < runs:
        round_no += 1
        round_runs = []
        for side in sides:
            gc.collect()
            with ContentionMeter() as meter:
                result = run(side)
            result.update(side=side, iteration=round_no, other_processes_cores=meter.other_cores,
                          contended=meter.other_cores is not None and meter.other_cores > args.contention_threshold)
            round_runs.append(result)
        discard = any(r["contended"] for r in round_runs) and redone < args.max_redo
        redone += discard
        kept += not discard
        for r in round_runs:
            r["discarded"] = discard
            results.append(r)
            others = "n/a" if r["other_processes_cores"] is None else f"{r['other_processes_cores']:.2f}"
            print(f"  {label} round {round_no:2} {r['side']:10} {describe(r)}  other processes: {others} cores"
                  f"{'  (contended: round discarded, redone)' if discard else ''}", file=sys.stderr)
    return results, redone


def _cost(reference_tps: float, tps: float) -> float:
    """Extra time per token of ``tps`` against ``reference_tps``, percent."""
    return (reference_tps / tps - 1) * 100


def measure_decode(args: argparse.Namespace, engine: Any, adapter: str, counter: TokenCounter) -> dict[str, Any]:
    sides_obj = DecodeSides(engine, adapter, counter)
    sides = ["base", "unmerged", "merged"]
    warmup = {side: sides_obj.run(side, args.prompt, args.max_new_tokens) for side in sides}
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

    runs, redone = _rounds(sides, run, args.decode_runs, args, "decode",
                           lambda r: f"{r['seconds']:.3f} s  {r['tokens_per_s']:6.2f} tok/s")
    kept = [r for r in runs if not r["discarded"]]
    figures = {}
    for side in sides:
        side_runs = [r for r in kept if r["side"] == side]
        figures[side] = {
            "runs": len(side_runs),
            "median_tokens_per_s": _median([r["tokens_per_s"] for r in side_runs]),
            "median_seconds": _median([r["seconds"] for r in side_runs]),
            "median_generate_only_tokens_per_s": _median([r["generate_only_tokens_per_s"] for r in side_runs]),
        }
    by_round = {side: {r["iteration"]: r for r in kept if r["side"] == side} for side in sides}

    def paired(side: str) -> list[float]:
        return [_cost(by_round["base"][i]["tokens_per_s"], by_round[side][i]["tokens_per_s"])
                for i in by_round["base"] if i in by_round[side]]

    base_tps = figures["base"]["median_tokens_per_s"]
    unmerged_cost = _cost(base_tps, figures["unmerged"]["median_tokens_per_s"])
    texts = {side: w["text"] for side, w in warmup.items()}
    all_texts = {side: {r["text"] for r in runs if r["side"] == side} | {texts[side]} for side in sides}
    return {
        "adapter": adapter,
        "prompt": args.prompt,
        "prompt_tokens": warmup["base"]["prompt_tokens"],
        "max_new_tokens": args.max_new_tokens,
        "sides": figures,
        "cost_percent": {
            "unmerged_vs_base": unmerged_cost,
            "merged_vs_base": _cost(base_tps, figures["merged"]["median_tokens_per_s"]),
            "unmerged_vs_merged": _cost(figures["merged"]["median_tokens_per_s"], figures["unmerged"]["median_tokens_per_s"]),
            "unmerged_vs_base_paired_median": _median(paired("unmerged")),
            "merged_vs_base_paired_median": _median(paired("merged")),
            "unmerged_vs_base_generate_only": _cost(figures["base"]["median_generate_only_tokens_per_s"],
                                                    figures["unmerged"]["median_generate_only_tokens_per_s"]),
        },
        "target_percent": args.decode_target,
        "target_met": unmerged_cost <= args.decode_target,
        "merge_ms_median": _ms(_median(sides_obj.merge_s)),
        "unmerge_ms_median": _ms(_median(sides_obj.unmerge_s)),
        "unmerge_max_abs_drift": max(sides_obj.unmerge_drift) if sides_obj.unmerge_drift else None,
        "merged_layers": len(sides_obj.layers),
        "rounds_discarded_for_contention": redone,
        "kept_runs_still_contended": sum(r["contended"] for r in kept),
        "outputs": texts,
        "outputs_stable_across_runs": all(len(v) == 1 for v in all_texts.values()),
        "merged_equals_unmerged": texts["merged"] == texts["unmerged"],
        "adapter_changes_output": texts["unmerged"] != texts["base"],
        "runs": [{k: v for k, v in r.items() if k != "text"} for r in runs],
    }


# -- 3. mixed-adapter batch vs one by one ---------------------------------------------------------------------
def batch_workload(names: list[str], fourth_is_copy: bool, synthetic: bool) -> tuple[list[str], list[str]]:
    """8 prompts over 4 adapters, 2 each, interleaved (a, b, c, d, a, b, c, d)."""
    per_adapter: dict[str, list[str]] = {}
    for name in names[:3]:
        per_adapter[name] = list(EXTRA_PROMPTS) if synthetic and not (DEMO_DATA / name).is_dir() else _read_prompts(name, 2)
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
            figures[side]["median_seconds"] = _median(figures[side]["seconds"])
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

    def __enter__(self) -> "ForwardTimer":
        def pre(module: Any, args: Any, kwargs: Any) -> None:
            self._started = _now()

        def post(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows, length = (tuple(ids.shape) if ids is not None else (0, 0))
            self.passes.append((int(rows), int(length), _now() - self._started))

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
            "prefill_ms_total": _ms(sum(p[2] for p in prefill)),
            "decode_steps": len(decode),
            "decode_rows": sorted({r for r, _, _ in decode}),
            "decode_step_ms_median": _ms(_median([p[2] for p in decode])) if decode else None,
            "decode_ms_total": _ms(sum(p[2] for p in decode)),
            "outside_forward_ms": _ms(seconds - sum(p[2] for p in self.passes)),
            "seconds": seconds,
        }


def _run_batch_side(engine: Any, counter: TokenCounter, prompts: list[str], adapters: list[Any], n: int,
                    batched: bool, ignore_eos: bool = False) -> dict[str, Any]:
    counter.reset()
    started = _now()
    gen = {"temperature": 0, "max_new_tokens": n, "ignore_eos": ignore_eos}
    if batched:
        texts = engine.generate_batch(prompts, adapters=adapters, **gen)
    else:
        texts = [engine.generate(p, adapter=a, **gen) for p, a in zip(prompts, adapters)]
    seconds = _now() - started
    return {"seconds": seconds, "texts": texts, "new_tokens": counter.new_tokens,
            "per_prompt_tokens": [c.completion_tokens for c in counter.completions],
            "generate_s": sum(counter.generate_s), "calls": len(counter.generate_s)}


BATCH_SIDE_LABELS = {
    "batch_fixed": "fixed length: generate_batch(8 task prompts, adapters=[4 adapters x 2], ignore_eos=True)",
    "one_by_one_fixed": "fixed length: 8 x generate(task prompt, adapter=..., ignore_eos=True)",
    "batch": "generate_batch(8 task prompts, adapters=[4 adapters x 2])",
    "one_by_one": "8 x generate(task prompt, adapter=...)",
    "batch_long": "long answers: generate_batch(8 open prompts, 4 adapters x 2)",
    "one_by_one_long": "long answers: 8 x generate(open prompt, adapter=...)",
}


def measure_batch(args: argparse.Namespace, engine: Any, names: list[str], counter: TokenCounter) -> dict[str, Any]:
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
    counter.wrap_peft()
    n = args.batch_max_new_tokens
    fns: dict[str, Callable[[], dict[str, Any]]] = {}
    for workload, (ps, ads, fixed) in workloads.items():
        suffix = "" if workload == "tasks" else "_" + workload
        fns["batch" + suffix] = lambda ps=ps, ads=ads, f=fixed: _run_batch_side(engine, counter, ps, ads, n, True, f)
        fns["one_by_one" + suffix] = lambda ps=ps, ads=ads, f=fixed: _run_batch_side(engine, counter, ps, ads, n, False, f)
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

    runs, redone = _rounds(list(fns), run, args.batch_runs, args, "batch",
                           lambda r: f"{r['seconds']:.3f} s  {r['new_tokens']:4d} tokens  {r['tokens_per_s']:6.2f} tok/s")
    kept = [r for r in runs if not r["discarded"]]
    figures = {}
    for side in fns:
        side_runs = [r for r in kept if r["side"] == side]
        figures[side] = {
            "label": BATCH_SIDE_LABELS[side],
            "runs": len(side_runs),
            "median_seconds": _median([r["seconds"] for r in side_runs]),
            "median_tokens_per_s": _median([r["tokens_per_s"] for r in side_runs]),
            "new_tokens": side_runs[0]["new_tokens"],
            "per_prompt_tokens": warmup[side]["per_prompt_tokens"],
            "median_ms_outside_model_generate": _median([_ms(r["seconds"] - r["generate_s"]) for r in side_runs]),
            "model_generate_calls": side_runs[0]["calls"],
        }
    by_round = {side: {r["iteration"]: r for r in kept if r["side"] == side} for side in fns}
    stable = all(r["texts"] == warmup[r["side"]]["texts"] for r in runs)

    per_workload: dict[str, Any] = {}
    for workload, (ps, ads, _) in workloads.items():
        suffix = "" if workload == "tasks" else "_" + workload
        b, o = "batch" + suffix, "one_by_one" + suffix
        paired = [by_round[o][i]["seconds"] / by_round[b][i]["seconds"] for i in by_round[b] if i in by_round[o]]
        tokens = warmup[o]["per_prompt_tokens"]
        mismatches = [
            {"index": i, "adapter": ads[i], "prompt": ps[i], "batch": bt, "one_by_one": st}
            for i, (bt, st) in enumerate(zip(warmup[b]["texts"], warmup[o]["texts"])) if bt != st
        ]
        per_workload[workload] = {
            "prompts": ps, "adapters": ads,
            "speedup": figures[o]["median_seconds"] / figures[b]["median_seconds"],
            "speedup_paired_median": _median(paired),
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
    variants["batch_all_base"] = lambda: _run_batch_side(engine, counter, prompts, [None] * 8, n, True)
    variants["batch_all_one_adapter"] = lambda: _run_batch_side(engine, counter, prompts, [names[1]] * 8, n, True)
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
        "rounds_discarded_for_contention": redone,
        "kept_runs_still_contended": sum(r["contended"] for r in kept),
        "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs],
    }


# -- report -------------------------------------------------------------------------------------------------
def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console()
    return Console(width=150) if console.width < 150 else console


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]], notes: list[str]) -> None:
    console = _console()
    if console is None:
        print(title)
        widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
        print("\n".join(notes))
        return
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in notes:
        console.print(line, highlight=False)


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
    print_table("1. Switch latency (ms)", ("operation", "n", "median ms", "min ms", "max ms"), rows, notes)


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
    print_table(f"2. Decode, {d['max_new_tokens']} new tokens, greedy, {d['prompt_tokens']} prompt tokens",
                ("side", "median tok/s", "median s/call", "model.generate alone tok/s", "runs (tok/s)"), rows, notes)


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
    print_table(f"3. Batch of {len(bt['prompts'])} prompts over {len(set(bt['adapters']))} adapters, "
                f"max_new_tokens={bt['max_new_tokens']}, greedy",
                ("side", "median s", "new tokens", "median tok/s", "ms outside model.generate", "runs (s)"), rows, notes)
    rows = []
    for side, b in bt["forward_breakdown"].items():
        rows.append((side, f"{b['seconds']:.3f}", str(b["prefill_passes"]), f"{b['prefill_ms_total']:.0f}",
                     str(b["decode_steps"]), ",".join(map(str, b["decode_rows"])),
                     "-" if b["decode_step_ms_median"] is None else f"{b['decode_step_ms_median']:.1f}",
                     f"{b['decode_ms_total']:.0f}", f"{b['outside_forward_ms']:.0f}"))
    print_table("3b. Where the time goes (one extra call each, every forward pass timed)",
                ("call", "s", "prefills", "prefill ms", "decode steps", "rows", "ms/step (median)", "decode ms",
                 "ms outside forward"), rows, [])


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
    console = _console()
    for line, met in summary_lines(result):
        if console is None:
            print(line)
        else:
            style = "bold" if met is None else ("green" if met else "red")
            console.print(f"[{style}]{line}[/{style}]", highlight=False)


def profile_calls(engine: Any, args: argparse.Namespace, result: dict[str, Any], names: list[str], top: int) -> None:
    import cProfile
    import io
    import pstats

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
        profiler = cProfile.Profile()
        profiler.enable()
        call()
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(top)
        print(f"\n===== cProfile: {name}, top {top} by cumulative time =====")
        print(stream.getvalue())
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
        print(f"\n===== cProfile: {name}, top {top} by own time =====")
        print(stream.getvalue())


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
        counter = TokenCounter(engine)
        print(f"model {info['base_model']} ({info['dtype']}, {info['device']}), adapters {names} in scratch store {store}",
              file=sys.stderr)
        result: dict[str, Any] = {}
        if "switch" in args.only:
            result["switch"] = measure_switch(args, engine, names, store, info)
            report_switch(result["switch"])
        if "decode" in args.only:
            adapter = args.decode_adapter or pick_decode_adapter(engine, names, args, counter)
            result["decode"] = measure_decode(args, engine, adapter, counter)
            report_decode(result["decode"])
        if "batch" in args.only:
            result["batch"] = measure_batch(args, engine, names, counter)
            report_batch(result["batch"])
        print_summary(result)

        stamp = {"date": started_at.isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name, *sys.argv])}
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
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_facts(),
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
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
        if args.profile:
            profile_calls(engine, args, result, names, args.profile)
        engine.cleanup()
    finally:
        shutil.rmtree(store, ignore_errors=True)
    missed = [k for k, met in doc["targets_met"].items() if not met]
    return 1 if args.fail_on_target and missed else 0


if __name__ == "__main__":
    sys.exit(main())
