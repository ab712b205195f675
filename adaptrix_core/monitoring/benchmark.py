"""``adaptrix benchmark ADAPTER``: one adapter against the base model, in one run on the current backend.

Measured through the public engine API, greedy, on one prompt (the adapter's first routing example,
else a generic one):

* time to first token (TTFT): the latency of a one-token request (prefill, adapter selection and
  the first decoding step);
* decode tokens/s: ``(N - 1)`` tokens over the time an ``N``-token request (``ignore_eos``) takes
  beyond the one-token request of the same round;
* base and adapter requests alternate, round by round (ABBA order), so that slow drifts of the
  machine fall on both sides alike;
* switch cost: a one-token adapter request right after a base-model request, minus one right after
  another adapter request; load cost: validating and injecting the adapter from the store (first
  load, then the median of ``rounds`` unload + load cycles);
* memory: the adapter's bytes in the model (``engine.memory_report()``) and on disk;
* task score: when the adapter's metadata points at an evaluation set (see ``evaluation_set``), the
  adapter's and the base model's score on its first ``eval_limit`` examples (``engine.evaluate``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

GENERIC_PROMPT = "Write a detailed, multi-paragraph essay about the history of the Roman Empire."
Progress = Callable[[str], None]


def evaluation_set(meta: Any, adapter_folder: Path, roots: Sequence[Path] = ()) -> tuple[Path | None, str, str]:
    """(JSONL path or None, metric, where it came from) of the adapter's evaluation set.

    1. ``evaluation`` in ``adaptrix.json``: ``{"data": "path.jsonl", "metric": "auto"}`` or just the
       path; a relative path is looked up in the adapter's folder, then in each of ``roots``.
    2. Else ``training.data``: a ``train.jsonl`` with a ``test.jsonl`` beside it; when the recorded
       path does not exist here (the demo adapters record the machine they were trained on), the
       same ``data/<...>/<task>/test.jsonl`` tail under each of ``roots``.
    """
    extra = getattr(meta, "model_extra", None) or {}
    declared = extra.get("evaluation")
    if declared:
        spec = declared if isinstance(declared, dict) else {"data": declared}
        metric = str(spec.get("metric") or "auto")
        data = Path(str(spec.get("data", "")))
        candidates = [data] if data.is_absolute() else [adapter_folder / data, *(root / data for root in roots)]
        found = next((c for c in candidates if c.is_file()), None)
        return found, metric, "evaluation" if found else f"evaluation.data {str(data)!r} was not found"
    trained_on = (getattr(meta, "training", None) or {}).get("data")
    if not trained_on or trained_on == "in-memory":
        return None, "auto", "no evaluation set in the metadata"
    train = Path(str(trained_on))
    if train.name != "train.jsonl":
        return None, "auto", f"training.data {str(train)!r} is not a train.jsonl with a test.jsonl beside it"
    candidates = [train.with_name("test.jsonl")]
    parts = train.parts
    if "data" in parts:
        tail = Path(*parts[len(parts) - 1 - parts[::-1].index("data"):]).with_name("test.jsonl")
        candidates += [root / tail for root in roots]
    found = next((c for c in candidates if c.is_file()), None)
    return found, "auto", "training.data's test.jsonl" if found else f"no test.jsonl beside training.data {str(train)!r}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _timed_query(engine: Any, prompt: str, adapter: Any, tokens: int) -> Any:
    return engine.query(prompt, adapter=adapter, temperature=0, max_new_tokens=tokens, ignore_eos=tokens > 1)


def _side_figures(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {"ttft_ms": _median([r["ttft_ms"] for r in runs]),
            "decode_tokens_per_s": _median([r["decode_tokens_per_s"] for r in runs if r["decode_tokens_per_s"]]),
            "tokens_per_s": _median([r["tokens_per_s"] for r in runs]),
            "latency_ms": _median([r["latency_ms"] for r in runs]),
            "completion_tokens": _median([r["completion_tokens"] for r in runs]), "runs": runs}


def run_benchmark(engine: Any, adapter: str, *, max_new_tokens: int = 32, rounds: int = 3, eval_limit: int = 20,
                  prompt: str | None = None, roots: Sequence[Path] = (), progress: Progress | None = None) -> dict[str, Any]:
    """Measure ``adapter`` against the base model on ``engine`` (see the module docstring); a JSON-ready dict."""
    from adaptrix_core.adapters.metadata import WEIGHTS_FILE
    from adaptrix_core.adapters.store import AdapterManager
    from adaptrix_core.training.data import load_examples

    say = progress or (lambda _stage: None)
    say("loading the model")
    engine.initialize()
    info = engine.get_model_info()
    store = AdapterManager(engine.config.adapters.directory)
    meta = store.metadata(adapter)
    prompt = prompt or (meta.routing.example_prompts[0] if meta.routing.example_prompts else GENERIC_PROMPT)

    say("loading the adapter")
    started = time.perf_counter()
    engine.load_adapter(adapter)
    first_load_ms = (time.perf_counter() - started) * 1000
    memory = engine.memory_report()
    weights_file = store.path(adapter) / WEIGHTS_FILE

    say("warming up")
    for spec in (None, adapter):
        _timed_query(engine, prompt, spec, 2)
    sides: dict[str, list[dict[str, float]]] = {"base": [], "adapter": []}
    for number in range(rounds):
        say(f"decoding, round {number + 1} of {rounds}")
        order = ("base", "adapter") if number % 2 == 0 else ("adapter", "base")
        for side in order:
            spec = adapter if side == "adapter" else None
            _timed_query(engine, prompt, spec, 1)  # untimed: the switch from the other side is measured apart
            first = _timed_query(engine, prompt, spec, 1)
            full = _timed_query(engine, prompt, spec, max_new_tokens)
            extra_s = (full.latency_ms - first.latency_ms) / 1000
            decode = (full.completion_tokens - 1) / extra_s if full.completion_tokens > 1 and extra_s > 0 else None
            sides[side].append({"ttft_ms": first.latency_ms, "latency_ms": full.latency_ms,
                                "completion_tokens": full.completion_tokens, "decode_tokens_per_s": decode,
                                "tokens_per_s": full.completion_tokens / (full.latency_ms / 1000)})

    say("measuring the switch cost")
    switched, same, reloads = [], [], []
    for _ in range(rounds):
        _timed_query(engine, prompt, None, 1)
        switched.append(_timed_query(engine, prompt, adapter, 1).latency_ms)
        same.append(_timed_query(engine, prompt, adapter, 1).latency_ms)
        engine.unload_adapter(adapter)
        started = time.perf_counter()
        engine.load_adapter(adapter)
        reloads.append((time.perf_counter() - started) * 1000)

    base, adapted = _side_figures(sides["base"]), _side_figures(sides["adapter"])
    report: dict[str, Any] = {
        "adapter": adapter, "model": info["model_id"], "base_model": info.get("base_model"), "backend": info["backend"],
        "device": info["device"], "dtype": info["dtype"], "prompt": prompt, "max_new_tokens": max_new_tokens,
        "rounds": rounds, "base": base, "with_adapter": adapted,
        "decode_slowdown_percent": (base["decode_tokens_per_s"] / adapted["decode_tokens_per_s"] - 1) * 100
        if base["decode_tokens_per_s"] and adapted["decode_tokens_per_s"] else None,
        "ttft_extra_ms": adapted["ttft_ms"] - base["ttft_ms"],
        "switch": {"switch_ms": _median(switched) - _median(same), "after_base_ms": _median(switched),
                   "after_same_adapter_ms": _median(same), "first_load_ms": first_load_ms,
                   "reload_ms": _median(reloads)},
        "memory": {"adapter_bytes": memory["adapters"].get(adapter),
                   "weights_file_bytes": weights_file.stat().st_size if weights_file.is_file() else None,
                   "base_model_bytes": memory.get("base_model_bytes")},
    }
    path, metric, origin = evaluation_set(meta, store.path(adapter), roots)
    if eval_limit == 0:
        path, origin = None, "--eval-limit 0"
    if path is None:
        report["evaluation"] = {"skipped": origin}
        return report
    examples = load_examples(path)[:eval_limit]
    say(f"scoring {len(examples)} examples with the adapter")
    with_adapter = engine.evaluate(examples, adapter=adapter, metric=metric)
    say(f"scoring {len(examples)} examples with the base model")
    without = engine.evaluate(examples, adapter=None, metric=metric)
    report["evaluation"] = {"data": str(path), "source": origin, "metric": with_adapter["metric"],
                            "examples": with_adapter["examples"], "adapter_score": with_adapter["score"],
                            "base_score": without["score"]}
    return report
