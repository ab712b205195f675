"""The request log: one SQLite row per request (model, backend, adapters and weights, routing decision,
tokens, latency, time to first token, tokens/s, finish reason, error type, source) and one per adapter
load/unload/evict, written off the hot path. :class:`~adaptrix_core.monitoring.recorder.RequestLog`
queues rows in memory and a background thread commits them in batches (WAL, one transaction per
batch) so that recording never slows generation and committed rows survive a crash;
:mod:`~adaptrix_core.monitoring.store` holds the versioned schema, :mod:`~adaptrix_core.monitoring.stats`
the aggregations behind ``adaptrix stats`` (percentiles per adapter and per route, CSV, a PNG plot)
and :mod:`~adaptrix_core.monitoring.benchmark` the measurements of ``adaptrix benchmark``. Prompts and
answers are stored only when ``monitoring.store_text`` is on. See docs/monitoring.md.
"""

from __future__ import annotations

from adaptrix_core.monitoring.recorder import RequestLog, failure_fields, request_fields

__all__ = ["RequestLog", "failure_fields", "request_fields"]
