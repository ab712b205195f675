"""What a caller holds for one submitted request: its text pieces, its result, cancellation.

The scheduler's decode thread publishes into a :class:`RequestHandle`; any number of threads or
asyncio tasks read from it (``stream`` / ``astream`` replay the pieces from the start, so a late
reader misses nothing). No torch here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from adaptrix_core.errors import RequestCancelledError
from adaptrix_core.generation.params import trim_at_stop

if TYPE_CHECKING:
    from adaptrix_core.types import QueryResult

# A space the tokenizer's clean-up may still remove (" ." -> ".", " n't" -> "n't") is held back
# while fewer than this many characters follow it.
_CLEANUP_TAIL = 4


class RequestHandle:
    """One request in the scheduler: ``stream()`` / ``astream()`` its text, ``result()`` its ``QueryResult``.

    ``ttft_ms`` (time to first token, from submission) is None until the first token is out.
    ``cancel()`` asks the scheduler to drop the request: a waiting one leaves the queue at once, a
    running one leaves the batch at the next step. After a cancel, ``stream`` ends quietly and
    ``result`` raises ``RequestCancelledError``. A stream closed before its end (``break`` out of the
    loop, an asyncio task cancelled when the client went away) cancels the request too.
    """

    def __init__(self, request_id: str, on_cancel: Callable[[RequestHandle], None]) -> None:
        self.id = request_id
        self.submitted = time.perf_counter()
        self.ttft_ms: float | None = None
        self._on_cancel = on_cancel
        self._cond = threading.Condition()
        self._pieces: list[str] = []
        self._done = False
        self._result: QueryResult | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        # asyncio readers waiting: (loop, event, woken by each new piece too (streams) or by the end only)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]] = []

    # -- reading ------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once the request has finished, failed or been cancelled."""
        return self._done

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._cancelled

    def stream(self) -> Iterator[str]:
        """Yield the text pieces as they are generated (stop strings already cut)."""
        index, complete = 0, False
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda seen=index: self._done or len(self._pieces) > seen)
                    pieces, finished = self._pieces[index:], self._done
                index += len(pieces)
                yield from pieces
                if finished:
                    complete = True
                    break
        finally:
            if not complete:
                self.cancel()
        self._raise_failure()

    async def astream(self) -> AsyncIterator[str]:
        """``stream()`` for asyncio: awaits new pieces without blocking the event loop."""
        index, complete = 0, False
        try:
            while True:
                await self._until(lambda seen=index: self._done or len(self._pieces) > seen)
                with self._cond:
                    pieces, finished = self._pieces[index:], self._done
                index += len(pieces)
                for piece in pieces:
                    yield piece
                if finished:
                    complete = True
                    break
        finally:
            if not complete:
                self.cancel()
        self._raise_failure()

    def result(self, timeout: float | None = None) -> QueryResult:
        """Wait for the ``QueryResult``; ``TimeoutError`` after ``timeout`` seconds (the request goes on)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"Request {self.id} did not finish within {timeout} s.")
        return self._outcome()

    async def aresult(self) -> QueryResult:
        """``result()`` for asyncio."""
        await self._until(lambda: self._done, pieces=False)  # no wake-up per token: the decode thread keeps the GIL
        return self._outcome()

    def cancel(self) -> None:
        """Drop the request (see the class docstring); does nothing once it is done."""
        with self._cond:
            if self._done or self._cancelled:
                return
            self._cancelled = True
        self._on_cancel(self)

    # -- writing (the scheduler) --------------------------------------------------------------------
    def _first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.submitted) * 1000

    def _publish(self, piece: str) -> None:
        if piece:
            with self._cond:
                self._pieces.append(piece)
                self._wake(ended=False)

    def _finish(self, result: QueryResult | None = None, error: BaseException | None = None) -> None:
        with self._cond:
            if self._done:
                return
            self._result, self._error, self._done = result, error, True
            self._wake(ended=True)

    # -- internals ----------------------------------------------------------------------------------
    def _wake(self, ended: bool) -> None:  # called with self._cond held
        self._cond.notify_all()
        woken = [waiter for waiter in self._waiters if ended or waiter[2]]
        self._waiters = [waiter for waiter in self._waiters if not (ended or waiter[2])]
        for loop, event, _ in woken:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass

    async def _until(self, ready: Callable[[], bool], pieces: bool = True) -> None:
        loop = asyncio.get_running_loop()
        while True:
            event = asyncio.Event()
            with self._cond:
                if ready():
                    return
                self._waiters.append((loop, event, pieces))
            await event.wait()

    def _raise_failure(self) -> None:
        error = self._error
        if error is not None and not (self._cancelled and isinstance(error, RequestCancelledError)):
            raise error

    def _outcome(self) -> QueryResult:
        if self._error is not None:
            raise self._error
        return self._result


class TextTracker:
    """Turns a row's whole decoded text after each step into safe-to-send pieces.

    A piece never contains part of a stop string (text that could still become one is held back),
    nor an incomplete UTF-8 tail (U+FFFD at the end), nor a space the tokenizer's clean-up may still
    remove; joined, the pieces equal the final text.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def feed(self, text: str, final: bool) -> tuple[str, str | None]:
        """(piece to send now, final text or None): the final text is set when the row must end."""
        kept, found = trim_at_stop(text, self.stop)
        if found or final:
            return self._send(kept, len(kept)), kept
        visible = text.rstrip("\ufffd")
        limit = len(visible) - self.hold
        space = max(visible.rfind(" "), visible.rfind("\n"), visible.rfind("\t"))
        if space >= 0 and len(visible) - space <= _CLEANUP_TAIL:
            limit = min(limit, space)
        return self._send(visible, limit), None

    def _send(self, text: str, limit: int) -> str:
        if limit <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent):limit]
        self.sent += piece
        return piece

