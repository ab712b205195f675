"""ONNX backend benchmark: task accuracy, decode tokens/s and time to first token, adapter switch cost.

Sides: ``hf`` (eager PyTorch, fp32) and ``int4`` / ``int8`` / ``fp32`` (the ``onnx`` backend at
that precision), each an engine on the default model in its OWN process (torch's and onnxruntime's
thread pools compete when they share one, which makes both look slow). The coordinator sends one
request at a time, so the processes never run together, and interleaves the sides round by round.

* accuracy: ``engine.evaluate`` (greedy, exact / JSON match, as ``scripts/train_demo_adapters.py``)
  of each demo adapter on its held-out set ``data/demo/<task>/test.jsonl``; ``hf`` is measured too
  unless ``--hf-accuracy docs`` takes the figures of docs/adapters.md. Target: the default precision
  within 3 points of hf fp32 on every task.
* speed: per round and side, ``query(PROMPT, max_new_tokens=1)`` (time to first token) and
  ``query(PROMPT, max_new_tokens=N)`` with ``ignore_eos`` (decode rate = (N - 1) / (full - first)),
  base model and with the ``dates`` adapter. A round where other processes kept more than
  ``--contention-threshold`` cores busy is redone (harness rule). Target: int4 >= 4x hf decode with
  an adapter active.
* switch: requests of one token alternating two adapters vs repeating one (per-request switch cost),
  and unload + load of an adapter.

* llamacpp (optional, ``--sides ...,llamacpp``): llama.cpp through llama-cpp-python on the same
  GGUF file with the adapter converted to a GGUF LoRA (``llamacpp_side.py``; install it with
  ``scripts/install_llamacpp.sh``, outside the default install and CI). Target: Adaptrix's fastest
  backend at least as fast as llama.cpp on decode with the adapter active.

Usage: ``python benchmarks/bench_onnx.py [--quick] [--rounds N] [--tokens N] [--examples N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.offline_environment()
REPO = Path(__file__).resolve().parent.parent
TASKS = ("arithmetic", "dates", "extraction")
DOCS_HF_ACCURACY = {"arithmetic": 0.47, "dates": 1.0, "extraction": 1.0}  # docs/adapters.md, engine.evaluate
PROMPT = ("Write a detailed story about a lighthouse keeper who finds a message in a bottle. Describe the sea, "
          "the weather and how the keeper feels.")
ADAPTER = "dates"
DEFAULT_PRECISION = "int4"


# -- the worker: one engine in its own process -------------------------------------------------------
def ensure_onnx_plugin() -> None:
    """Register the built-in onnx plugin when the installed entry points do not list it (an old install)."""
    import adaptrix_plugins.backends.onnx as onnx_plugin
    from adaptrix_core.plugins import get_plugin_manager
    from adaptrix_core.registry import collect

    manager = get_plugin_manager()
    if "onnx" not in collect(manager).backends and manager.get_plugin("backend_onnx") is None:
        manager.register(onnx_plugin, name="backend_onnx")


#: Side name -> plugins.onnx settings ("int4" is the default: int4 for base requests, int8 for adapted ones).
ONNX_SIDES = {"int4": {"precision": "int4"}, "int4-all": {"precision": "int4", "adapter_precision": "int4"},
              "int8": {"precision": "int8"}, "fp32": {"precision": "fp32"}}


def make_engine(side: str, threads: int | None) -> Any:
    from adaptrix_core import ModularAdaptrixEngine

    if side == "hf":
        return ModularAdaptrixEngine(config={"model": {"torch_threads": threads}} if threads else {})
    ensure_onnx_plugin()
    return ModularAdaptrixEngine(backend="onnx", config={"plugins": {"onnx": {**ONNX_SIDES[side], "threads": threads}}})


def speed(engine: Any, adapter: str | None, tokens: int) -> dict[str, Any]:
    with harness.ContentionMeter() as meter:
        first = engine.query(PROMPT, adapter=adapter, temperature=0, max_new_tokens=1, ignore_eos=True)
        full = engine.query(PROMPT, adapter=adapter, temperature=0, max_new_tokens=tokens, ignore_eos=True)
    decode_s = (full.latency_ms - first.latency_ms) / 1000
    return {"ttft_ms": first.latency_ms, "total_ms": full.latency_ms, "tokens": full.completion_tokens,
            "decode_tok_s": (full.completion_tokens - 1) / decode_s if decode_s > 0 else float("nan"),
            "prompt_tokens": full.prompt_tokens, "other_processes_cores": meter.other_cores}


def accuracy(engine: Any, examples: int | None) -> dict[str, Any]:
    from adaptrix_core.training.data import load_examples

    scores = {}
    for task in TASKS:
        data = load_examples(REPO / "data" / "demo" / task / "test.jsonl")[:examples]
        started = time.perf_counter()
        result = engine.evaluate(data, adapter=task)
        scores[task] = {"metric": result["metric"], "score": result["score"], "examples": result["examples"],
                        "seconds": round(time.perf_counter() - started, 1)}
    return scores


def switch(engine: Any, requests: int) -> dict[str, Any]:
    def timed(adapters: list[str]) -> float:
        started = time.perf_counter()
        for name in adapters:
            engine.query("Hello", adapter=name, temperature=0, max_new_tokens=1)
        return (time.perf_counter() - started) * 1000 / len(adapters)

    engine.preload(["dates", "arithmetic"])
    timed(["dates", "arithmetic"] * 2)
    same = statistics.median(timed(["dates"] * requests) for _ in range(3))
    alternating = statistics.median(timed(["dates", "arithmetic"] * (requests // 2)) for _ in range(3))
    loads = []
    for _ in range(5):
        engine.unload_adapter("arithmetic")
        started = time.perf_counter()
        engine.load_adapter("arithmetic")
        loads.append((time.perf_counter() - started) * 1000)
    return {"same_adapter_ms": same, "alternating_ms": alternating, "switch_cost_ms": alternating - same,
            "load_adapter_ms": statistics.median(loads)}


def worker(side: str, threads: int | None) -> None:
    """Serve JSON requests on stdin; answer on the original stdout (library output goes to stderr)."""
    if side == "llamacpp":
        import llamacpp_side

        llamacpp_side.worker(PROMPT, ADAPTER, threads)
        return
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    started = time.perf_counter()
    engine = make_engine(side, threads).initialize()
    engine.generate("Hello", temperature=0, max_new_tokens=4)  # warm-up
    info = engine.get_model_info()
    out.write(json.dumps({"ready": round(time.perf_counter() - started, 1), "precision": info.get("precision", "fp32"),
                          "adapter_precision": info.get("adapter_precision", "fp32"), "onnx_build": info.get("onnx_build"),
                          "lora_slots": info.get("lora_slots")}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "speed":
            reply = speed(engine, request["adapter"], request["tokens"])
        elif op == "accuracy":
            reply = accuracy(engine, request["examples"])
        elif op == "switch":
            reply = switch(engine, request["requests"])
        else:
            break
        out.write(json.dumps(reply) + "\n")
    engine.cleanup()


# -- the coordinator -----------------------------------------------------------------------------------
class Side:
    """A worker process running one side."""

    def __init__(self, name: str, threads: int | None):
        command = [sys.executable, __file__, "--worker", name] + (["--threads", str(threads)] if threads else [])
        self.name = name
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker ended early (see its errors above)")
        return json.loads(line)

    def ask(self, **request: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "stop"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


def wait_for_quiet(limit_s: float, threshold: float) -> float | None:
    """Wait (at most ``limit_s``) for a 5-second window in which other processes use under ``threshold`` cores."""
    deadline = time.monotonic() + limit_s
    while True:
        with harness.ContentionMeter() as meter:
            time.sleep(5)
        if meter.other_cores is None or meter.other_cores < threshold or time.monotonic() > deadline:
            return meter.other_cores
        print(f"  waiting for a quiet machine (other processes: {meter.other_cores:.2f} cores)", file=sys.stderr)


def speed_rounds(sides: list[Side], args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    kept = redone = number = 0
    while kept < args.rounds:
        number += 1
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet, max(args.contention_threshold, 0.3))
        batch = []
        for side in sides:
            for adapter in (None, ADAPTER):
                run = side.ask(op="speed", adapter=adapter, tokens=args.tokens)
                run.update(side=side.name, adapter=adapter or "none", iteration=number,
                           contended=harness.is_contended(run["other_processes_cores"], args.contention_threshold))
                batch.append(run)
                print(f"  round {number} {side.name:5} adapter={adapter or 'none':5} {run['decode_tok_s']:7.1f} tok/s "
                      f"ttft {run['ttft_ms']:6.0f} ms  other processes: {run['other_processes_cores'] or 0:.2f} cores",
                      file=sys.stderr)
        discard = any(r["contended"] for r in batch) and redone < args.max_redo
        redone += discard
        kept += not discard
        for run in batch:
            run["discarded"] = discard
        runs.extend(batch)
    return runs


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for run in (r for r in runs if not r["discarded"]):
        entry = summary.setdefault(f"{run['side']}/{run['adapter']}", {"decode": [], "ttft": []})
        entry["decode"].append(run["decode_tok_s"])
        entry["ttft"].append(run["ttft_ms"])
    return {key: {"decode_tok_s": harness.median(v["decode"]), "ttft_ms": harness.median(v["ttft"]),
                  "runs": len(v["decode"])} for key, v in summary.items()}


def report(doc: dict[str, Any]) -> None:
    figures = doc.get("speed_summary", {})
    rows = []
    for key, values in figures.items():
        side, adapter = key.split("/")
        reference = figures.get(f"hf/{adapter}", {}).get("decode_tok_s")
        ratio = values["decode_tok_s"] / reference if reference else float("nan")
        rows.append((side, adapter, f"{values['decode_tok_s']:.1f}", f"{ratio:.2f}x", f"{values['ttft_ms']:.0f}", values["runs"]))
    if rows:
        harness.print_table(f"decode and time to first token ({doc['tokens']} tokens, prompt {doc['prompt_tokens']} tokens)",
                            ("side", "adapter", "decode tok/s", "vs hf", "TTFT ms", "rounds"), rows, left=(0, 1))
    if doc.get("accuracy"):
        rows = [(task, *(f"{doc['accuracy'][side][task]['score'] * 100:.0f}%" for side in doc["accuracy"]))
                for task in TASKS]
        harness.print_table("task accuracy on the held-out sets", ("task", *doc["accuracy"]), rows)
    rows = [(side, f"{v['switch_cost_ms']:.2f}", f"{v['same_adapter_ms']:.1f}", f"{v['load_adapter_ms']:.1f}")
            for side, v in doc.get("switch", {}).items()]
    if rows:
        harness.print_table("adapter switching (per request)", ("side", "switch cost ms", "1-token request ms", "load ms"),
                            rows)
    harness.print_notes([(note, met) for note, met in doc["targets"]])


def targets(doc: dict[str, Any]) -> list[tuple[str, bool | None]]:
    notes = []
    figures, scores = doc.get("speed_summary", {}), doc.get("accuracy", {})
    for side, label in (("int4-all", "int4 graph"), ("int4", "default (int4, adapters on int8)")):
        if f"{side}/{ADAPTER}" in figures and f"hf/{ADAPTER}" in figures:
            ratio = figures[f"{side}/{ADAPTER}"]["decode_tok_s"] / figures[f"hf/{ADAPTER}"]["decode_tok_s"]
            notes.append((f"target: {label} decode with an adapter >= 4x hf eager: {ratio:.2f}x", ratio >= 4))
    ours = {side: v["decode_tok_s"] for side in ("hf", *ONNX_SIDES) if (v := figures.get(f"{side}/{ADAPTER}"))}
    if ours and f"llamacpp/{ADAPTER}" in figures:
        best = max(ours, key=ours.get)
        ratio = ours[best] / figures[f"llamacpp/{ADAPTER}"]["decode_tok_s"]
        notes.append((f"target: fastest Adaptrix side ({best}) decode with an adapter >= llama.cpp's: {ratio:.2f}x",
                      ratio >= 1))
    for side, label in (("int4-all", "int4 graph"), ("int8", f"default {DEFAULT_PRECISION} (adapters on int8)")):
        if side in scores and "hf" in scores:
            worst = max((scores["hf"][t]["score"] - scores[side][t]["score"]) * 100 for t in TASKS)
            notes.append((f"target: {label} within 3 points of hf fp32 on every task: worst loss {worst:.0f} points",
                          worst <= 3))
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_common_args(parser, default_out=harness.RESULTS_DIR / "onnx.json",
                            threads_help="CPU threads of every side (torch and onnxruntime); None: each library's default")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sides", default="hf,int4,int4-all,int8,fp32",
                        help="comma-separated: hf, int4 (the default: int8 for adapted requests), int4-all, int8, fp32, "
                        "llamacpp (optional: llama.cpp on the GGUF file, after scripts/install_llamacpp.sh)")
    parser.add_argument("--rounds", type=int, default=5, help="kept speed rounds")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per speed run")
    parser.add_argument("--examples", type=int, default=None, help="held-out examples per task (default: all 100)")
    parser.add_argument("--accuracy-sides", default="hf,int4-all,int8",
                        help="sides whose task accuracy is measured (the default int4 side answers adapted requests "
                        "with its int8 graph, so its accuracy is int8's)")
    parser.add_argument("--hf-accuracy", choices=("measure", "docs"), default="measure",
                        help="measure hf's accuracy too, or take docs/adapters.md's figures (same sets and scoring)")
    parser.add_argument("--switch-requests", type=int, default=20, help="requests per switch-cost measurement")
    parser.add_argument("--phases", default="speed,switch,accuracy", help="which of speed, switch, accuracy to run")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each speed round, wait up to this long for other processes to go quiet")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other phases' results already in --out (to run the phases at different times)")
    args = harness.parse_with_quick(parser, argv, {"rounds": 1, "tokens": 32, "examples": 10, "switch_requests": 4,
                                                   "sides": "hf,int4,int4-all"}, name="onnx")
    if args.worker:
        worker(args.worker, args.threads)
        return
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}" + ("  (busy machine: figures are unreliable)" if load >= 1.5 else ""), file=sys.stderr)
    names, phases = args.sides.split(","), set(args.phases.split(","))
    measured = [n for n in args.accuracy_sides.split(",") if "accuracy" in phases and n in names
                and (n != "hf" or args.hf_accuracy == "measure")]
    names = [n for n in names if phases - {"accuracy"} or n in measured]  # an accuracy-only run starts only those
    sides: list[Side] = []
    doc: dict[str, Any] = {"benchmark": "onnx"}
    if args.merge and Path(args.out).is_file():
        doc = json.loads(Path(args.out).read_text(encoding="utf-8"))
        doc.pop("machine", None)
    try:
        for name in names:
            sides.append(Side(name, args.threads))
            print(f"  {name} ready in {sides[-1].info['ready']} s ({sides[-1].info})", file=sys.stderr)
        if "speed" in phases:
            runs = speed_rounds(sides, args)
            doc.update(speed=runs, speed_summary=summarize(runs), tokens=args.tokens, prompt_tokens=runs[0]["prompt_tokens"],
                       speed_command=harness.command_line(), speed_load_average_at_start=load)
        if "switch" in phases:
            doc["switch"] = {side.name: side.ask(op="switch", requests=args.switch_requests) for side in sides
                             if side.name != "llamacpp"}
        if "accuracy" in phases:
            scores = {side.name: side.ask(op="accuracy", examples=args.examples) for side in sides
                      if side.name in measured and side.name != "llamacpp"}
            if "hf" not in scores and args.examples is None:
                scores = {"hf": {t: {"metric": "docs", "score": v, "examples": 100} for t, v in DOCS_HF_ACCURACY.items()},
                          **scores}
            doc.update(accuracy=scores, accuracy_command=harness.command_line(),
                       hf_accuracy_source="measured" if "hf" in measured else "docs/adapters.md")
    finally:
        for side in sides:
            side.close()
    doc.setdefault("sides", {}).update({s.name: s.info for s in sides})
    doc["targets"] = targets(doc)
    report(doc)
    path = harness.write_results(args.out, doc)
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
