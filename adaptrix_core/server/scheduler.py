"""The request scheduler: concurrent requests decoded together, joining and leaving at step boundaries.

One background thread owns the model. Each loop it admits waiting requests up to
``max_batch_size`` (their prompts are prefilled together and merged into the running batch), then
runs one decode step for every row; rows leave as soon as they end (end-of-turn token, stop string,
``max_new_tokens``, the context window, a cancel). Every model call holds the engine lock for that
call only, so other engine calls (``load_adapter``, a plain ``query``) run between steps. Rows of a
batch may use different adapters (the backend's per-row adapters) and never see each other: a
greedy request gets the text ``engine.query`` gives it alone.

The batching itself is a backend capability (``adaptrix_core.protocols.StepBatching``; the ``hf``
backend has it). A backend that answers concurrent calls (``Capability.CONCURRENT_REQUESTS``: the
``remote`` backend) runs up to ``max_batch_size`` requests side by side in worker threads, outside
the engine lock. With any other backend, requests run one at a time through the backend's
``generate`` behind the same interface.

Usage::

    scheduler = Scheduler(engine, max_batch_size=8, max_queue=64).start()
    handle = scheduler.submit(prompt="What is 12 + 30?", adapter="arithmetic", max_new_tokens=32)
    for piece in handle.stream(): ...
    result = handle.result()          # QueryResult
    scheduler.stop(drain=True)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adaptrix_core.capabilities import has_capability
from adaptrix_core.errors import (
    AdapterNotFoundError,
    ConfigError,
    ContextOverflowError,
    QueueFullError,
    RequestCancelledError,
    SchedulerStoppedError,
)
from adaptrix_core.generation.params import trim_at_stop
from adaptrix_core.generation.requests import PreparedRequest
from adaptrix_core.protocols import Capability, StepBatching, StepOutput, StepRow
from adaptrix_core.server.handle import RequestHandle, TextTracker

log = logging.getLogger("adaptrix.scheduler")


@dataclass
class _Request:
    handle: RequestHandle
    prepared: PreparedRequest
    token_ids: list[int] | None
    tracker: TextTracker = field(init=False)
    ended: bool = False

    def __post_init__(self) -> None:
        self.tracker = TextTracker(self.prepared.params.stop)


class Scheduler:
    """Queue and batch requests for one initialized ``ModularAdaptrixEngine`` (see the module docstring).

    ``max_batch_size`` bounds the rows decoded together, ``max_queue`` the requests waiting for a
    row (``submit`` raises ``QueueFullError`` beyond it). ``batching=False`` runs requests one at a
    time through the backend's ``generate`` even when it could batch them (the baseline a benchmark
    compares with); None batches whenever the backend can. ``source`` is the origin the request log
    records for its requests (failures included).
    """

    def __init__(self, engine: Any, max_batch_size: int = 8, max_queue: int = 64,
                 batching: bool | None = None, source: str = "server") -> None:
        for name, value in (("max_batch_size", max_batch_size), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        self.engine = engine
        self.source = source  # what the request log records as the requests' origin
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._wanted_batching = batching
        self._batching = False  # decided by start()
        self._workers: ThreadPoolExecutor | None = None  # for a backend with CONCURRENT_REQUESTS
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: dict[str, _Request] = {}
        self._cancelled: set[str] = set()  # running requests to drop at the next step
        self._orphans: list[_Request] = []  # cancelled while waiting: the decode thread ends them
        self._state = "new"  # new -> running -> stopping -> stopped
        self._drain = True
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        """Start the decode thread (loads the model if needed); returns the scheduler."""
        with self._cond:
            if self._state != "new":
                return self
            self._batching = self._batching_backend()
            if not self._batching and has_capability(self.engine.backend, Capability.CONCURRENT_REQUESTS):
                self._workers = ThreadPoolExecutor(self.max_batch_size, thread_name_prefix="adaptrix-request")
            self._state = "running"
            self._thread = threading.Thread(target=self._loop, name="adaptrix-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting requests; with ``drain`` finish the accepted ones (waiting and running) first.

        After ``timeout`` seconds, or at once without ``drain``, the remaining requests fail with
        ``SchedulerStoppedError``. Returns when the decode thread has ended.
        """
        with self._cond:
            never_started = self._state == "new"
            if self._state in ("new", "running"):
                self._state = "stopped" if never_started else "stopping"
            self._drain = self._drain and drain
            self._cond.notify_all()
        if never_started:
            self._fail_waiting(SchedulerStoppedError("The scheduler was stopped before it started."))
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._drain = False
                self._cond.notify_all()
            self._thread.join()
        if self._workers is not None:
            self._workers.shutdown(wait=self._drain)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a row."""
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        """Requests in the running batch."""
        return len(self._running)

    @property
    def running(self) -> bool:
        """True while the decode thread accepts and serves requests."""
        return self._state == "running"

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, prompt: str | None = None, messages: Sequence[Any] | None = None, use_rag: bool = False,
               top_k: int | None = None, min_score: float | None = None, **gen: Any) -> RequestHandle:
        """Queue one request (``prompt`` or OpenAI-style ``messages``); returns its handle at once.

        ``gen`` takes ``engine.query``'s generation arguments (``max_new_tokens``, ``temperature``,
        ``top_p``, ``seed``, ``stop``, ``adapter``, ``ignore_eos``, ...). Bad arguments raise the
        engine's typed errors here, in the caller's thread; a full queue raises ``QueueFullError``
        and a stopping scheduler ``SchedulerStoppedError``.
        """
        self._check_open()
        try:
            prepared = self.engine.prepare_request(prompt=prompt, messages=messages, use_rag=use_rag, top_k=top_k,
                                                   min_score=min_score, **gen)
        except Exception as exc:
            self.engine.record_failure(exc, self.source)
            raise
        try:
            token_ids = None
            if self._batching_backend():
                token_ids = self.engine.backend.encode_prompt(prepared.prompt, templated=prepared.templated)
                if len(token_ids) >= prepared.params.max_context:
                    raise ContextOverflowError(len(token_ids), prepared.params.max_context)
            handle = RequestHandle(f"req-{self._prefix}-{next(self._ids)}", self._cancel)
            with self._cond:
                self._check_open()
                self._waiting.append(_Request(handle, prepared, token_ids))
                self._cond.notify_all()
            return handle
        except BaseException as exc:
            self.engine.release_request(prepared, error=exc if isinstance(exc, Exception) else None, source=self.source)
            raise

    def _check_open(self) -> None:
        with self._cond:
            if self._state in ("stopping", "stopped"):
                raise SchedulerStoppedError("The server is shutting down and accepts no new requests.")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue}); retry later."
                )

    def _batching_backend(self) -> bool:
        return self._wanted_batching is not False and isinstance(self.engine.backend, StepBatching)

    def _cancel(self, handle: RequestHandle) -> None:
        # Called from any thread, the event loop's too: it never waits for the engine lock (a step).
        with self._cond:
            waiting = next((request for request in self._waiting if request.handle is handle), None)
            if waiting is None:
                self._cancelled.add(handle.id)
            else:
                self._waiting.remove(waiting)
                if self._state in ("running", "stopping"):
                    self._orphans.append(waiting)
                    waiting = None
            self._cond.notify_all()
        if waiting is not None:  # no decode thread to hand it to
            self._end(waiting, error=RequestCancelledError(f"Request {handle.id} was cancelled."))

    # -- the decode thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        batch = None
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work)
                if self._state != "running" and (not self._drain or not (self._waiting or self._running)):
                    break
                orphans, self._orphans = self._orphans, []
                room = self.max_batch_size - len(self._running)
                admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                for request in admitted:
                    self._running[request.handle.id] = request
                cancelled, self._cancelled = self._cancelled, set()
            for request in orphans:
                self._end(request, error=RequestCancelledError(f"Request {request.handle.id} was cancelled."))
            try:
                if not self._batching:
                    for request in admitted:
                        if self._workers is not None:
                            self._workers.submit(self._run_concurrently, request)
                        else:
                            self._run_alone(request)
                    continue
                if batch is None:
                    with self.engine.lock:
                        batch = self.engine.backend.new_step_batch()
                self._drop(batch, cancelled)
                if admitted:
                    self._prefill(batch, admitted)
                if len(batch):
                    self._decode(batch)
            except Exception as exc:  # logged; the thread must live: fail the running rows, start afresh
                log.exception("scheduler step failed")
                batch = None
                for request in list(self._running.values()):
                    self._end(request, error=exc)
        failure = SchedulerStoppedError("The server shut down before this request finished.")
        with self._cond:
            self._state = "stopped"
            orphans, self._orphans = self._orphans, []
        for request in orphans:
            self._end(request, error=RequestCancelledError(f"Request {request.handle.id} was cancelled."))
        self._fail_waiting(failure)
        for request in list(self._running.values()):
            self._end(request, error=failure)

    def _has_work(self) -> bool:  # called with self._cond held
        if self._orphans:
            return True
        if self._workers is None:
            return bool(self._waiting or self._running) or self._state != "running"
        if self._waiting and len(self._running) < self.max_batch_size:  # running requests are in worker threads
            return True
        return self._state != "running" and not (self._drain and self._running)

    def _drop(self, batch: Any, cancelled: set[str]) -> None:
        # Adapters that went away are checked where the work runs, under its lock (_prefill, _decode).
        gone = [key for key in cancelled if key in self._running]
        with self.engine.lock:
            batch.remove(gone)
        for key in gone:
            self._end(self._running[key], error=RequestCancelledError(f"Request {key} was cancelled."))

    def _prefill(self, batch: Any, admitted: list[_Request]) -> None:
        admitted = [r for r in admitted if r.handle.id in self._running]  # not cancelled meanwhile
        if not admitted:
            return
        try:
            with self.engine.lock:
                for request in list(admitted):  # an adapter unloaded while the request waited
                    target = request.prepared.choice.target
                    if not self.engine.adapter_available(target):
                        admitted.remove(request)
                        self._end(request, error=AdapterNotFoundError(
                            f"Adapter {target!r} was unloaded while this request was waiting; submit it again."))
                rows = [StepRow(r.handle.id, r.token_ids, r.prepared.params, r.prepared.choice.target) for r in admitted]
                outputs = batch.add(rows) if rows else []
        except Exception as exc:  # noqa: BLE001 (handed to the new requests; the running rows are untouched)
            log.warning("prefill of %d request(s) failed: %s", len(admitted), exc)
            for request in admitted:
                self._end(request, error=exc)
            return
        self._deliver(batch, outputs)

    def _decode(self, batch: Any) -> None:
        lost = []
        with self.engine.lock:  # checked under the step's own lock: an unload cannot slip in between
            for key in batch.keys():
                request = self._running.get(key)
                if request is not None and not self.engine.adapter_available(request.prepared.choice.target):
                    batch.remove([key])
                    lost.append(request)
            outputs = batch.step() if len(batch) else []
        for request in lost:
            self._end(request, error=AdapterNotFoundError(f"Adapter {request.prepared.choice.target!r} was unloaded "
                                                          "while this request was running; submit it again."))
        self._deliver(batch, outputs)

    def _deliver(self, batch: Any, outputs: list[StepOutput]) -> None:
        stopped = []
        for output in outputs:
            request = self._running.get(output.key)
            if request is None:
                continue
            request.handle._first_token()
            piece, final = request.tracker.feed(output.text, output.finish_reason is not None)
            request.handle._publish(piece)
            if final is None:
                continue
            reason = output.finish_reason or "stop"
            if output.finish_reason is None:
                stopped.append(output.key)
                reason = "stop"
            self._end(request, final, output.prompt_tokens, output.completion_tokens, reason)
        if stopped:
            batch.remove(stopped)

    def _run_concurrently(self, request: _Request) -> None:
        try:
            self._run_alone(request, locked=False)
        finally:
            with self._cond:
                self._cond.notify_all()  # a worker is free

    def _run_alone(self, request: _Request, locked: bool = True) -> None:
        """Backends without step batching: one request through ``generate`` (under the engine lock unless
        the backend serves concurrent requests)."""
        if request.handle.id in self._cancelled or request.handle.cancelled:
            self._end(request, error=RequestCancelledError(f"Request {request.handle.id} was cancelled."))
            return
        prepared = request.prepared
        try:
            with self.engine.lock if locked else contextlib.nullcontext():
                completion = self.engine.backend.generate([prepared.prompt], prepared.params,
                                                          templated=prepared.templated,
                                                          adapters=[prepared.choice.target])[0]
        except Exception as exc:  # noqa: BLE001 (handed to the request's caller)
            self._end(request, error=exc)
            return
        text, stopped = trim_at_stop(completion.text, prepared.params.stop)
        request.handle._first_token()
        request.handle._publish(text)
        self._end(request, text, completion.prompt_tokens, completion.completion_tokens,
                  "stop" if stopped else completion.finish_reason)

    def _end(self, request: _Request, text: str | None = None, prompt_tokens: int = 0, completion_tokens: int = 0,
             finish_reason: str = "stop", error: BaseException | None = None) -> None:
        """Finish a request with its result or an error; it leaves the running set, its adapters are unpinned."""
        with self._cond:
            if request.ended:  # a worker thread finishing after the scheduler gave up on it
                return
            request.ended = True
            self._running.pop(request.handle.id, None)
        if error is None:
            try:
                result = self.engine.finish_request(request.prepared, text, prompt_tokens, completion_tokens,
                                                    finish_reason, ttft_ms=request.handle.ttft_ms, source=self.source)
            except Exception as exc:  # noqa: BLE001 (handed to the request's caller)
                error = exc
            else:
                request.handle._finish(result=result)
                return
        self.engine.release_request(request.prepared, error=error, source=self.source)
        request.handle._finish(error=error)

    def _fail_waiting(self, error: BaseException) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            self._end(request, error=error)
