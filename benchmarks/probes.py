"""Pass-through observers on a running engine, shared by the engine benchmarks.

``GenerateProbe(engine)`` shadows the backend's ``generate`` with an instance attribute that records
every completion (the real new-token counts), and ``probe.time_generate_of(model)`` shadows a
transformers/peft model's ``generate`` to time the transformers call alone. Each wrapper adds about a
microsecond per call; nothing else in the engine changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class GenerateProbe:
    """Completions and ``model.generate`` times of the engine's calls since the last ``reset()``."""

    def __init__(self, engine: Any, sync: Callable[[], None] | None = None):
        self.backend = engine.backend
        self.completions: list[Any] = []
        self.generate_s: list[float] = []
        self._sync = sync or (lambda: None)
        self._timed: list[Any] = []  # models whose generate is wrapped (kept alive, compared by identity)
        backend_generate = self.backend.generate

        def counting_generate(*args: Any, **kwargs: Any) -> Any:
            completions = backend_generate(*args, **kwargs)
            self.completions.extend(completions)
            return completions

        self.backend.generate = counting_generate

    def time_generate_of(self, model: Any) -> None:
        """Time every ``model.generate`` call (once per model; None is ignored, e.g. no peft model yet)."""
        if model is None or any(model is m for m in self._timed):
            return
        model_generate = model.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            output = model_generate(*args, **kwargs)
            self._sync()
            self.generate_s.append(time.perf_counter() - started)
            return output

        model.generate = timed_generate
        self._timed.append(model)

    def reset(self) -> None:
        """Forget the calls seen so far."""
        self.completions.clear()
        self.generate_s.clear()

    @property
    def new_tokens(self) -> int:
        """New tokens of every completion since the last ``reset()``."""
        return sum(c.completion_tokens for c in self.completions)
