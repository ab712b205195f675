"""Scoring a router on labelled prompts: accuracy, macro-F1, confusion matrix, latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def score_routing(examples: Sequence[tuple[str, Any]], predictions: Sequence[list[str]], latencies_ms: Sequence[float],
                  labels: Sequence[str]) -> dict[str, Any]:
    """A prediction is correct when its top adapter is the label (or one of a list of labels)."""
    truth = [label[0] if isinstance(label, list) else label for _, label in examples]
    accepted = [set(label) if isinstance(label, list) else {label} for _, label in examples]
    top = [predicted[0] for predicted in predictions]
    all_labels = list(dict.fromkeys([*labels, *truth, *top]))
    confusion = {t: {p: 0 for p in all_labels} for t in all_labels}
    correct = 0
    for expected, allowed, predicted in zip(truth, accepted, top):
        hit = predicted in allowed
        correct += hit
        confusion[expected][predicted if not hit else expected] += 1
    f1s = {}
    for label in all_labels:
        tp = confusion[label][label]
        fp = sum(confusion[other][label] for other in all_labels if other != label)
        fn = sum(confusion[label][other] for other in all_labels if other != label)
        if tp + fp + fn:
            f1s[label] = 2 * tp / (2 * tp + fp + fn)
    return {
        "examples": len(truth),
        "accuracy": correct / len(truth),
        "macro_f1": sum(f1s.values()) / len(f1s) if f1s else 0.0,
        "f1": f1s,
        "confusion": confusion,
        "latency_ms": {"p50": _percentile(latencies_ms, 0.5), "p95": _percentile(latencies_ms, 0.95),
                       "mean": sum(latencies_ms) / len(latencies_ms)},
    }
