"""``RequestTracker``: how the engine feeds the request log — one row per request, one per adapter event.

The engine wraps each request in ``tracker.track(prompt)``; the row is written (off the hot path,
by the ``RequestLog``'s thread) when the request ends, with its error type if it raised. ``source``
says who asked: ``library`` by default, ``cli`` and ``server`` set by those front ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adaptrix_core.monitoring.recorder import RequestLog, failure_fields, request_fields


class RequestTracker:
    """Records requests and adapter events into the request log of ``settings`` (``config.monitoring``).

    The log opens on first use; ``model_id`` and ``backend_name()`` label rows of failed requests.
    """

    def __init__(self, settings: Any, cache_dir: str | Path, model_id: str, backend_name: Callable[[], str | None]):
        self.settings, self.cache_dir = settings, cache_dir
        self.model_id, self._backend_name = model_id, backend_name
        self.source = "library"
        self._log: RequestLog | None = None
        self._lock = threading.Lock()

    @property
    def log(self) -> RequestLog:
        """The request log (opened on first use; a no-op log when ``monitoring.enabled`` is off)."""
        with self._lock:
            if self._log is None:
                self._log = RequestLog.from_settings(self.settings, self.cache_dir)
            return self._log

    @contextlib.contextmanager
    def track(self, prompt: str | None = None) -> Iterator[Callable[..., None]]:
        """Yields ``done(result, ttft_ms=None)``; a request that raises instead is recorded as failed."""
        started = time.perf_counter()
        try:
            yield lambda result, ttft_ms=None: self.log.record_request(
                **request_fields(result, source=self.source, ttft_ms=ttft_ms, prompt=prompt))
        except Exception as exc:
            self.log.record_request(**failure_fields(exc, source=self.source, model=self.model_id,
                                                     backend=self._backend_name(), prompt=prompt,
                                                     latency_ms=(time.perf_counter() - started) * 1000))
            raise

    def event(self, kind: str, adapter: str, seconds: float | None) -> None:
        """Record an adapter load, unload or eviction and how long it took."""
        self.log.record_event(kind, adapter, seconds)

    def close(self) -> None:
        """Flush and close the log (rows already queued are written)."""
        with self._lock:
            log, self._log = self._log, None
        if log is not None:
            log.close()
