"""``RequestLog``: record requests and adapter events without slowing generation.

``record_request`` / ``record_event`` only check the field names and append the row to a bounded
in-memory queue (a few microseconds); a daemon thread wakes every ``flush_interval`` seconds (or as
soon as ``batch_size`` rows wait) and commits what is queued, one transaction per batch. When the
queue is full a new row is dropped and counted (``status()["dropped"]``) rather than waited for.
Retention (by age and by row count) runs on the first flush and then every ``retention_interval``
seconds. ``flush()`` waits until everything queued so far is committed; ``close()`` (also run at
interpreter exit) flushes and stops the thread. A failure of the log (an unwritable path, a file
that is not a request log) never reaches the caller: it is logged once as a warning, the rows are
counted as failed, and the next flush tries again.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptrix_core.errors import MonitoringError
from adaptrix_core.monitoring.store import MonitoringStore, adapter_label

if TYPE_CHECKING:
    from adaptrix_core.config import MonitoringSettings
    from adaptrix_core.types import QueryResult

log = logging.getLogger("adaptrix.monitoring")

SOURCES = ("library", "cli", "server")
EVENT_KINDS = ("load", "unload", "evict")
#: Keyword arguments ``record_request`` accepts (every one optional except ``source``).
REQUEST_FIELDS = frozenset({
    "time", "model", "backend", "adapters", "adapter_weights", "router", "routed", "route_confidence",
    "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "tokens_per_s", "finish_reason",
    "error_type", "source", "prompt", "answer",
})
_TEXT_FIELDS = ("prompt", "answer")


def _number(value: Any, kind: type) -> Any:
    if value is None or isinstance(value, bool):
        return None
    number = kind(value)
    return number if kind is int or math.isfinite(number) else None


def _request_row(fields: dict[str, Any]) -> tuple:
    """The ``requests`` row (``store.REQUEST_COLUMNS`` order) of one ``record_request`` call."""
    weights = fields.get("adapter_weights")
    adapters = fields.get("adapters")
    weights = {str(n): float(w) for n, w in (weights.items() if weights else ((n, 1.0) for n in adapters or ()))}
    adapters = [str(n) for n in (adapters if adapters is not None else weights)]
    latency = _number(fields.get("latency_ms"), float)
    completion = _number(fields.get("completion_tokens"), int)
    rate = _number(fields.get("tokens_per_s"), float)
    if rate is None and latency and completion is not None and not fields.get("error_type"):
        rate = completion / (latency / 1000)
    routed = fields.get("routed")
    return (
        float(fields["time"]), fields.get("model"), fields.get("backend"), json.dumps(adapters), json.dumps(weights),
        adapter_label(weights), fields.get("router"), None if routed is None else json.dumps(dict(routed)),
        _number(fields.get("route_confidence"), float), _number(fields.get("prompt_tokens"), int), completion,
        latency, _number(fields.get("ttft_ms"), float), rate, fields.get("finish_reason"), fields.get("error_type"),
        fields["source"], fields.get("prompt"), fields.get("answer"),
    )


class RequestLog:
    """A request log that never blocks its callers (see the module docstring).

    A disabled log (``enabled=False``, or ``RequestLog.from_settings`` with ``monitoring.enabled``
    off) is a real object whose ``record_*`` methods return ``False`` at once; it opens no file and
    starts no thread. ``record_*`` return ``True`` when the row was queued.
    """

    def __init__(self, path: str | Path | None, *, enabled: bool = True, store_text: bool = False,
                 queue_size: int = 10_000, retention_days: float | None = None, retention_rows: int | None = None,
                 flush_interval: float = 1.0, batch_size: int = 512, retention_interval: float = 300.0):
        if enabled and path is None:
            raise MonitoringError("An enabled RequestLog needs a path (the SQLite file of the log).")
        if queue_size < 1 or batch_size < 1 or flush_interval <= 0:
            raise MonitoringError(f"queue_size ({queue_size}) and batch_size ({batch_size}) must be at least 1 and "
                                  f"flush_interval ({flush_interval}) positive.")
        self.path = None if path is None else Path(path).expanduser()
        self.enabled = bool(enabled)
        self.store_text = bool(store_text)
        self.queue_size, self.batch_size, self.flush_interval = queue_size, batch_size, flush_interval
        self.retention_days, self.retention_rows, self.retention_interval = retention_days, retention_rows, retention_interval
        self._queue: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._done = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = self._stopping = False
        self._enqueued = self._processed = 0
        self._counts = {"written": 0, "dropped": 0, "failed": 0}
        self._last_error: str | None = None
        self._warned = False
        self._last_retention: float | None = None

    @classmethod
    def from_settings(cls, settings: MonitoringSettings, cache_dir: str | Path) -> RequestLog:
        """The log ``settings`` (``config.monitoring``) describe; disabled (no-op) when ``enabled`` is false."""
        if not settings.enabled:
            return cls(None, enabled=False)
        return cls(settings.resolved_path(cache_dir), store_text=settings.store_text, queue_size=settings.queue_size,
                   retention_days=settings.retention_days, retention_rows=settings.retention_rows)

    # -- the hot path --------------------------------------------------------------------------------------
    def record_request(self, **fields: Any) -> bool:
        """Queue one request row (see ``REQUEST_FIELDS``); ``source`` is library, cli or server.

        ``prompt`` and ``answer`` are discarded unless ``store_text`` is on. ``time`` defaults to
        now; ``tokens_per_s`` to completion tokens over the latency. Unknown field names or a bad
        ``source`` raise ``MonitoringError``; nothing else is checked here (bad values are counted
        as failed rows by the writer).
        """
        if not self.enabled:
            return False
        unknown = fields.keys() - REQUEST_FIELDS
        if unknown:
            raise MonitoringError(f"Unknown request field(s) {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(sorted(REQUEST_FIELDS))}.")
        if fields.get("source") not in SOURCES:
            raise MonitoringError(f"source must be one of {', '.join(SOURCES)}, got {fields.get('source')!r}.")
        if not self.store_text:
            for name in _TEXT_FIELDS:
                fields.pop(name, None)
        if fields.get("time") is None:
            fields["time"] = time.time()
        return self._put(("request", fields))

    def record_event(self, kind: str, adapter: str, seconds: float | None) -> bool:
        """Queue one adapter event: ``kind`` load, unload or evict, and how long it took."""
        if not self.enabled:
            return False
        if kind not in EVENT_KINDS:
            raise MonitoringError(f"Adapter event kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}.")
        return self._put(("event", (time.time(), kind, str(adapter), seconds)))

    def _put(self, item: tuple[str, Any]) -> bool:
        with self._lock:
            if self._closed or len(self._queue) >= self.queue_size:
                self._counts["dropped"] += 1
                return False
            self._queue.append(item)
            self._enqueued += 1
            waiting = len(self._queue)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="adaptrix-request-log", daemon=True)
                self._thread.start()
                _LIVE.add(self)
        if waiting >= self.batch_size:
            self._wake.set()
        return True

    # -- control ---------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every row queued before this call is committed (or failed); False on timeout."""
        with self._lock:
            target, thread = self._enqueued, self._thread
        if thread is None:
            return True
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._processed >= target or not thread.is_alive(), timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued and stop the writer; later ``record_*`` calls are dropped. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
        _LIVE.discard(self)

    def status(self) -> dict[str, Any]:
        """``enabled``, ``path``, ``queued`` (waiting), ``written``, ``dropped`` (queue full or closed),
        ``failed`` (could not be written) and ``last_error``."""
        with self._lock:
            return {"enabled": self.enabled, "path": None if self.path is None else str(self.path),
                    "queued": len(self._queue), **self._counts, "last_error": self._last_error}

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        store: MonitoringStore | None = None
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                stopping = self._stopping
                handled = 0
                while True:
                    with self._lock:
                        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                    if not batch:
                        break
                    store = self._write(store, batch)
                    handled += len(batch)
                store = self._retain(store)
                with self._done:  # flush() returns once the rows and the retention pass are done
                    self._processed += handled
                    self._done.notify_all()
                if stopping:
                    return
        finally:
            if store is not None:
                store.close()
            with self._done:
                self._done.notify_all()

    def _write(self, store: MonitoringStore | None, batch: list[tuple[str, Any]]) -> MonitoringStore | None:
        requests, events = [], []
        for kind, payload in batch:
            try:
                if kind == "request":
                    requests.append(_request_row(payload))
                else:
                    events.append(payload)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:  # counted as failed below
                self._problem(MonitoringError(f"A request row could not be converted and was skipped: {exc!r}."))
        written = 0
        try:
            store = store or MonitoringStore.open(self.path)
            store.insert(requests, events)
            written = len(requests) + len(events)
        except Exception as exc:  # the log must never take generation down: report, count, retry next flush
            self._problem(exc)
            if store is not None:
                store.close()
            store = None
        with self._lock:
            self._counts["written"] += written
            self._counts["failed"] += len(batch) - written
        return store

    def _retain(self, store: MonitoringStore | None) -> MonitoringStore | None:
        if store is None or (self.retention_days is None and self.retention_rows is None):
            return store
        now = time.monotonic()
        if self._last_retention is not None and now - self._last_retention < self.retention_interval:
            return store
        self._last_retention = now
        try:
            deleted = store.apply_retention(self.retention_days, self.retention_rows)
            if deleted:
                log.info("request log: retention deleted %d old rows from %s", deleted, self.path)
        except Exception as exc:
            self._problem(exc)
        return store

    def _problem(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, MonitoringError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._last_error = message
            first = not self._warned
            self._warned = True
        if first:
            log.warning("request log %s: %s (rows are counted as failed; generation is not affected)", self.path, message)


_LIVE: weakref.WeakSet[RequestLog] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, commit what every open log still holds (a few seconds at most)."""
    for request_log in list(_LIVE):
        request_log.close(timeout=5.0)


def _error_name(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return type(error).__name__


def request_fields(result: QueryResult, *, source: str, ttft_ms: float | None = None,
                   error: BaseException | str | None = None, prompt: str | None = None) -> dict[str, Any]:
    """The ``record_request`` keyword arguments describing ``result`` (a ``QueryResult``).

    ``error`` (an exception or its type name) marks a request that failed after producing a result
    (a stream cut short); ``prompt`` and the answer are dropped by the log unless ``store_text`` is on.
    """
    routing = result.routing or {}
    return {
        "model": result.model_id, "backend": result.backend, "adapters": list(result.adapters),
        "adapter_weights": dict(result.adapter_weights), "router": routing.get("router"),
        "routed": routing.get("selected") if routing else None, "route_confidence": routing.get("confidence"),
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "latency_ms": result.latency_ms, "ttft_ms": ttft_ms, "finish_reason": result.finish_reason,
        "error_type": _error_name(error), "source": source, "prompt": prompt, "answer": result.text,
    }


def failure_fields(error: BaseException | str, *, source: str, model: str | None = None, backend: str | None = None,
                   adapter_weights: dict[str, float] | None = None, latency_ms: float | None = None,
                   prompt: str | None = None) -> dict[str, Any]:
    """The ``record_request`` keyword arguments of a request that raised before producing a result."""
    return {"model": model, "backend": backend, "adapter_weights": dict(adapter_weights or {}),
            "latency_ms": latency_ms, "error_type": _error_name(error), "source": source, "prompt": prompt}
