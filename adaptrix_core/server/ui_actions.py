"""What the web UI does, without Gradio: it asks the app's own scheduler, engine and metrics.

Every answer goes through ``state.scheduler`` (the same queue and batches as ``/v1/chat/completions``)
and is recorded in the app's Prometheus metrics under the endpoint ``/ui``; uploads go through
``uploads.ingest_files``, the status page shows ``GET /status``. Nothing here builds a second engine.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from adaptrix_core.errors import InvalidGenerationParameterError

ENDPOINT = "/ui"
AUTO, BASE = "auto", "base"


# -- the adapter picker ------------------------------------------------------------------------------
def adapter_choices(state: Any) -> list[str]:
    """The picker's entries: ``auto`` (when a router is configured), ``base``, then every adapter."""
    engine = state.engine
    names = sorted(set(engine.adapter_manager.names()) | set(engine.loaded_adapters()))
    return ([AUTO] if engine.config.router.name else []) + [BASE, *names]


def parse_adapter_choice(value: str | None) -> Any:
    """The ``adapter`` argument a picker entry stands for.

    ``base`` (or empty) is the base model, ``auto`` the router, ``a=0.7,b=0.3`` a weighted mix,
    ``a,b`` a stack, anything else one adapter's name.
    """
    text = (value or "").strip()
    if text in ("", BASE):
        return None
    if text == AUTO:
        return AUTO
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not any("=" in part for part in parts):
        return parts[0] if len(parts) == 1 else parts
    weights: dict[str, float] = {}
    for part in parts:
        name, _, weight = part.partition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            raise InvalidGenerationParameterError(
                f"The weight {weight.strip()!r} of adapter {name.strip()!r} is not a number; write a mix as "
                "'arithmetic=0.7,dates=0.3'.") from None
        if not math.isfinite(weights[name.strip()]):
            raise InvalidGenerationParameterError(f"The weight {weight.strip()!r} of adapter {name.strip()!r} "
                                                  "is not a finite number.")
    return weights


# -- answers -----------------------------------------------------------------------------------------
async def submit(state: Any, messages: list[dict[str, str]], adapter: str | None, use_rag: bool = False,
                 max_new_tokens: int | None = None, temperature: float | None = None) -> Any:
    """Queue one chat request with the app's scheduler; its handle (typed errors for bad arguments)."""
    state.require_ready()
    gen: dict[str, Any] = {"adapter": parse_adapter_choice(adapter)}
    if max_new_tokens:
        gen["max_new_tokens"] = int(max_new_tokens)
    if temperature is not None:
        gen["temperature"] = float(temperature)
    return await run_in_threadpool(state.scheduler.submit, messages=messages, use_rag=bool(use_rag), **gen)


async def finish(state: Any, handle: Any) -> Any:
    """The handle's ``QueryResult``, counted in the app's metrics like an API request."""
    result = await handle.aresult()
    state.metrics.observe_result(ENDPOINT, result, handle.ttft_ms)
    return result


async def texts_of(state: Any, handles: list[Any]) -> AsyncIterator[tuple[int, str | None, BaseException | None]]:
    """(index, text so far, error) each time one of the handles' streams moves; text None when it ended.

    Leaving the loop early (the browser went away, the user pressed Stop) cancels the unfinished
    requests, counted in ``adaptrix_cancelled_requests_total{endpoint="/ui"}``.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, handle: Any) -> None:
        text = ""
        try:
            async for piece in handle.astream():
                text += piece
                await queue.put((index, text, None))
            await queue.put((index, None, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which shows it
            await queue.put((index, None, exc))

    tasks = [asyncio.ensure_future(pump(index, handle)) for index, handle in enumerate(handles)]
    try:
        running = len(tasks)
        while running:
            index, text, error = await queue.get()
            running -= text is None
            yield index, text, error
    finally:
        for task in tasks:
            task.cancel()
        for handle in handles:
            if not handle.done:
                handle.cancel()
                state.metrics.cancelled.labels(ENDPOINT).inc()


def describe(result: Any, ttft_ms: float | None) -> tuple[str, str]:
    """(one-line title, Markdown details) of how an answer was made: adapters, routing, sources, timing."""
    used = ", ".join(f"{name} ({weight:g})" for name, weight in result.adapter_weights.items()) or "base model"
    lines = [f"**Adapters:** {used}"]
    title = f"Answered by {used}"
    if result.routing:
        routing = result.routing
        chosen = ", ".join(routing.get("selected") or {}) or "base model"
        lines = [f"**Adapters:** {used}, chosen by the {routing.get('router')} router "
                 f"(confidence {routing.get('confidence', 0):.2f}: {routing.get('reason', '')})"]
        title = f"{routing.get('router')} router chose {chosen} ({routing.get('confidence', 0):.2f})"
    for source in result.sources:
        name = Path(str(source.get("source", ""))).name or source.get("document", "?")
        excerpt = " ".join(str(source.get("excerpt") or source.get("text") or "").split())
        excerpt = excerpt[:160] + ("…" if len(excerpt) > 160 else "")
        lines.append(f"**[{source.get('citation', '?')}]** {name} (score {source.get('score', 0):.2f}): {excerpt}")
    if result.sources:
        title += f" · {len(result.sources)} source{'s' if len(result.sources) > 1 else ''}"
    ttft = f" · first token {ttft_ms:.0f} ms" if ttft_ms is not None else ""
    lines.append(f"**Tokens:** {result.prompt_tokens} in, {result.completion_tokens} out · "
                 f"{result.latency_ms:.0f} ms{ttft} · finish: {result.finish_reason}")
    return title, "  \n".join(lines)


# -- adapters, documents, status ---------------------------------------------------------------------
def adapter_rows(state: Any) -> list[list[Any]]:
    """One table row per adapter: name, loaded, rank, layers, description, problem."""
    rows = []
    for entry in state.engine.list_adapters():
        layers = entry.get("target_layers")
        rows.append([entry["name"], "yes" if entry.get("loaded") else "", entry.get("rank") or "",
                     f"{len(layers)} layers" if layers else "all", entry.get("description") or "",
                     entry.get("problem") or ""])
    return rows


def document_rows(state: Any) -> list[list[Any]]:
    """One table row per indexed document: id, file, chunks, characters."""
    return [[doc.get("id"), Path(str(doc.get("source", ""))).name, doc.get("chunks"),
             doc.get("chars")] for doc in state.engine.list_documents()]


def ingest_paths(state: Any, paths: list[str]) -> list[list[str]]:
    """Ingest files the browser uploaded (Gradio's temporary copies) like ``POST /upload``; result rows."""
    from adaptrix_core.server.uploads import ingest_files

    state.require_ready()
    handles = [open(path, "rb") for path in paths]  # noqa: SIM115 - closed below
    try:
        answer = ingest_files(state.engine, [(Path(path).name, None, handle) for path, handle in zip(paths, handles)])
    finally:
        for handle in handles:
            handle.close()
    return [[entry["filename"], entry["status"], entry.get("document") or entry.get("error", {}).get("message", "")]
            for entry in answer["files"]]


def status_rows(state: Any) -> list[list[str]]:
    """``GET /status`` flattened into (setting, value) rows."""
    from adaptrix_core.server.native import status_report

    def flat(prefix: str, value: Any) -> list[list[str]]:
        if isinstance(value, dict):
            return [row for key, inner in value.items() for row in flat(f"{prefix}.{key}" if prefix else key, inner)]
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "(none)"
        elif isinstance(value, int) and prefix.endswith("_bytes"):
            value = f"{value / 2**20:,.1f} MiB"
        return [[prefix, "" if value is None else str(value)]]

    return flat("", status_report(state))


def _samples(metric: Any, suffix: str) -> list[Any]:
    return [sample for family in metric.collect() for sample in family.samples if sample.name.endswith(suffix)]


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th observation."""
    rank, lower, below = q * count, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, cumulative
    return lower


def adapter_metrics(metrics: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per adapter, from the app's Prometheus metrics: (summary rows, latency distribution points).

    A summary row holds requests, mean/p50/p95 latency (ms, p50/p95 estimated from the histogram
    buckets), completion tokens and tokens per second (completion tokens over request time). A
    distribution point is (adapter, le_ms, share of requests answered within le_ms).
    """
    buckets: dict[str, list[tuple[float, float]]] = {}
    for sample in _samples(metrics.adapter_latency, "_bucket"):
        buckets.setdefault(sample.labels["adapter"], []).append((float(sample.labels["le"]), sample.value))
    sums = {s.labels["adapter"]: s.value for s in _samples(metrics.adapter_latency, "_sum")}
    tokens = {s.labels["adapter"]: s.value for s in _samples(metrics.tokens_out, "_total")}
    rows, points = [], []
    for adapter in sorted(buckets):
        series = sorted(buckets[adapter])
        count = series[-1][1] if series else 0.0
        if not count:
            continue
        seconds = sums.get(adapter, 0.0)
        rows.append({"adapter": adapter, "requests": int(count), "mean_ms": round(seconds / count * 1000, 1),
                     "p50_ms": round(_quantile(series, count, 0.5) * 1000, 1),
                     "p95_ms": round(_quantile(series, count, 0.95) * 1000, 1),
                     "completion_tokens": int(tokens.get(adapter, 0)),
                     "tokens_per_s": round(tokens.get(adapter, 0) / seconds, 1) if seconds else 0.0})
        points += [{"adapter": adapter, "le_ms": bound * 1000, "share": round(cumulative / count, 4)}
                   for bound, cumulative in series if not math.isinf(bound)]
    # The buckets reach 160 s: cut the flat tail, past the bucket where the last adapter reached 100 %.
    complete = [min((p["le_ms"] for p in points if p["adapter"] == row["adapter"] and p["share"] >= 1),
                    default=math.inf) for row in rows]
    cutoff = max(complete, default=math.inf)
    return rows, [point for point in points if point["le_ms"] <= cutoff]
