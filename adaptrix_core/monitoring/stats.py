"""Aggregations of the request log: per adapter and per routing decision, CSV export, a PNG plot.

Percentiles are nearest-rank (the ``ceil(q * n)``-th smallest value), as in ``benchmarks/``. Latency,
time to first token and tokens/s are taken over successful requests only; ``errors`` counts the
others. Nothing here loads a model; the log is opened read-only.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adaptrix_core.errors import MonitoringError, OptionalDependencyError
from adaptrix_core.monitoring.store import BASE_LABEL, REQUEST_COLUMNS, MonitoringStore, adapter_label

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
PLOT_INSTALL = "pip install 'adaptrix[plot]'"


def parse_since(text: str) -> float:
    """Seconds in a window such as ``30m``, ``1h``, ``2d``, ``1w`` or ``1h30m`` (units s, m, h, d, w)."""
    compact = str(text).strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise MonitoringError(f"{text!r} is not a time window; use a number and a unit (s, m, h, d, w), "
                              "e.g. 30m, 1h, 2d or 1h30m.")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise MonitoringError(f"{text!r} is an empty window; give a positive duration such as 1h.")
    return seconds


def percentile(values: Iterable[float], share: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when there are none); ``share`` in [0, 1]."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = math.ceil(share * len(ordered) - 1e-9)
    return ordered[max(rank, 1) - 1]


def _figures(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


def _present(rows: Sequence[dict[str, Any]], column: str) -> list[float]:
    return [row[column] for row in rows if row[column] is not None]


def group_figures(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """count, errors, error_rate, latency_ms / ttft_ms p50 and p95, tokens_per_s p50 and mean, token totals."""
    ok = [row for row in rows if not row["error_type"]]
    rates = _present(ok, "tokens_per_s")
    return {
        "count": len(rows),
        "errors": len(rows) - len(ok),
        "error_rate": (len(rows) - len(ok)) / len(rows) if rows else 0.0,
        "latency_ms": _figures(_present(ok, "latency_ms")),
        "ttft_ms": _figures(_present(ok, "ttft_ms")),
        "tokens_per_s": {"p50": percentile(rates, 0.5), "mean": statistics.fmean(rates) if rates else None},
        "prompt_tokens": sum(_present(rows, "prompt_tokens")),
        "completion_tokens": sum(_present(rows, "completion_tokens")),
    }


def summarize(rows: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Totals, ``by_adapter`` (one entry per adapter label), ``by_route`` (one per router and choice,
    routed requests only, with the mean confidence) and ``adapter_events`` (per adapter and kind)."""
    by_adapter: dict[str, list] = {}
    by_route: dict[tuple[str, str], list] = {}
    for row in rows:
        by_adapter.setdefault(row["adapter_label"], []).append(row)
        if row["router"]:
            by_route.setdefault((row["router"], adapter_label(row["routed"] or {})), []).append(row)
    routes = []
    for (router, chosen), group in sorted(by_route.items()):
        confidences = _present(group, "route_confidence")
        routes.append({"router": router, "chosen": chosen, **group_figures(group),
                       "confidence_mean": statistics.fmean(confidences) if confidences else None})
    grouped_events: dict[tuple[str, str], list[float | None]] = {}
    for event in events:
        grouped_events.setdefault((event["adapter"], event["kind"]), []).append(event["seconds"])
    event_rows = []
    for (adapter, kind), seconds in sorted(grouped_events.items()):
        timed = [s * 1000 for s in seconds if s is not None]
        event_rows.append({"adapter": adapter, "kind": kind, "count": len(seconds),
                           "ms_p50": percentile(timed, 0.5), "ms_max": max(timed) if timed else None})
    return {
        **{k: v for k, v in group_figures(rows).items() if k in ("count", "errors", "error_rate")},
        "by_adapter": [{"adapter": label, **group_figures(group)} for label, group in sorted(by_adapter.items())],
        "by_route": routes,
        "adapter_events": event_rows,
    }


def load(path: str | Path, since: str | None = None, adapter: str | None = None,
         now: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None] | None:
    """(request rows, event rows, window start) of the log at ``path``; None when no log exists yet.

    ``since`` is a window (``1h``); ``adapter`` keeps the requests that used that adapter (``none``:
    the base model only) and that adapter's events.
    """
    start = None if since is None else (time.time() if now is None else now) - parse_since(since)
    store = MonitoringStore.open_readonly(path)
    if store is None:
        return None
    try:
        if adapter is not None and adapter.lower() == "none":
            return store.requests(start, ""), [], start  # the base model has no adapter events
        return store.requests(start, adapter), store.events(start, adapter), start
    finally:
        store.close()


def iso(seconds: float) -> str:
    """Unix seconds as an ISO 8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the raw request rows as CSV (``time_utc`` added; JSON columns as JSON); atomic: a failure
    leaves any previous file whole. Returns the path written."""
    import json

    path = Path(path).expanduser()
    temporary = _atomic_target(path)
    columns = ["id", "time_utc", *REQUEST_COLUMNS]
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                values = {**row, "time_utc": iso(row["time"])}
                writer.writerow(["" if values[c] is None else json.dumps(values[c]) if isinstance(values[c], (list, dict))
                                 else values[c] for c in columns])
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "Adaptrix requests") -> Path:
    """Draw latency over time, latency p50/p95 and tokens/s per adapter into a PNG at ``path`` (atomic).

    Needs matplotlib (``pip install 'adaptrix[plot]'``): ``OptionalDependencyError`` otherwise.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionalDependencyError(f"--plot needs matplotlib, which is not installed: {PLOT_INSTALL} "
                                      "(or pip install matplotlib).") from None
    path = Path(path).expanduser()
    ok = [row for row in rows if not row["error_type"] and row["latency_ms"] is not None]
    labels = sorted({row["adapter_label"] for row in ok})
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplot_mosaic([["timeline", "timeline"], ["latency", "throughput"]])
    timeline, latency, throughput = axes["timeline"], axes["latency"], axes["throughput"]
    errors = len(rows) - len(ok)
    figure.suptitle(f"{title} ({len(rows)} requests, {errors} failed or without a latency)")
    for label in labels:
        group = [row for row in ok if row["adapter_label"] == label]
        shown = "base model" if label == BASE_LABEL else label
        timeline.plot([datetime.fromtimestamp(r["time"]) for r in group], [r["latency_ms"] for r in group],
                      marker="o", markersize=3, linewidth=0.8, label=shown)
    timeline.set_ylabel("latency (ms)")
    timeline.set_title("latency of each request (local time)")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    timeline.xaxis.set_major_locator(locator)
    timeline.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if labels:
        timeline.legend(loc="best", fontsize="small")
    names = ["base model" if label == BASE_LABEL else label for label in labels]
    positions = list(range(len(labels)))
    figures = {label: group_figures([r for r in ok if r["adapter_label"] == label]) for label in labels}
    width = 0.38
    latency.bar([p - width / 2 for p in positions], [figures[x]["latency_ms"]["p50"] or 0 for x in labels], width, label="p50")
    latency.bar([p + width / 2 for p in positions], [figures[x]["latency_ms"]["p95"] or 0 for x in labels], width, label="p95")
    latency.set_title("latency per adapter (ms)")
    throughput.bar(positions, [figures[x]["tokens_per_s"]["p50"] or 0 for x in labels], 0.6, color="tab:green")
    throughput.set_title("tokens/s per adapter (median)")
    for axis in (latency, throughput):
        axis.set_xticks(positions, names, rotation=20, ha="right", fontsize="small")
    if labels:
        latency.legend(fontsize="small")
    temporary = _atomic_target(path)
    try:
        figure.savefig(temporary, format="png", dpi=110)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
