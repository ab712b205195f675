"""The engine's seam for a request scheduler: prepare a request up front, build its result at the end.

``engine.query()`` does everything in one call under the engine lock. A server's scheduler instead
checks and renders a request when it arrives (so bad arguments fail at once, in the caller's
thread), decodes it inside a shared batch step by step, and builds the ``QueryResult`` when it
ends. The adapters a prepared request runs with are pinned: the LRU cache never evicts them until
``finish_request`` / ``release_request``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptrix_core.adapters.choice import ACTIVE, AdapterChoice
from adaptrix_core.errors import ContextOverflowError, InvalidPromptError
from adaptrix_core.generation.params import check_messages, check_prompt
from adaptrix_core.types import QueryResult, SamplingParams


@dataclass
class PreparedRequest:
    """A checked request, ready for a backend: rendered prompt, resolved sampling and adapter.

    ``prompt`` is the text after the chat template (``templated`` True) or the plain transcript;
    ``choice.target`` is the model-level adapter name (None: the base model); ``sources`` the RAG
    passages put into the prompt; ``started`` the ``time.perf_counter()`` at arrival, from which the
    result's latency is measured.
    """

    prompt: str
    templated: bool
    params: SamplingParams
    choice: AdapterChoice
    sources: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    released: bool = False


class RequestPlanner:
    """Prepares requests for a scheduler and builds their results; tracks the adapters they pin.

    It is composed of the engine's services: ``prompts`` (``PromptBuilder``), ``adapters``
    (``AdapterPool``), ``documents`` (``DocumentIndex``), ``model`` (returns the ``LoadedModel``),
    ``result`` (builds a ``QueryResult``) and the engine's ``lock``.
    """

    def __init__(self, prompts: Any, adapters: Any, documents: Any, model: Callable[[], Any],
                 result: Callable[..., QueryResult], lock: Any):
        self.prompts, self.adapters, self.documents = prompts, adapters, documents
        self._model, self._result, self._lock = model, result, lock
        self._busy_adapters: Counter[str] = Counter()

    def prepare_request(self, prompt: str | None = None, messages: Sequence[Any] | None = None,
                        use_rag: bool = False, top_k: int | None = None, min_score: float | None = None,
                        **gen: Any) -> PreparedRequest:
        """Check and render one request as ``query`` (``prompt``) or ``chat`` (``messages``) would.

        Exactly one of ``prompt`` / ``messages`` is given. Conversation memory is not used. Raises the
        same typed errors as ``query`` (bad generation arguments, unknown adapter, no router for
        ``"auto"``, a prompt longer than the context window); the adapters it chose stay loaded until
        ``finish_request`` or ``release_request``.
        """
        started = time.perf_counter()
        if (prompt is None) == (messages is None):
            raise InvalidPromptError("Give exactly one of prompt (a string) or messages (a list of chat messages).")
        if messages is None:
            conversation = [{"role": "user", "content": check_prompt(prompt)}]
        else:
            conversation = check_messages(messages)
        question = prompt if messages is None else conversation[-1]["content"]
        with self._lock:
            params = self.prompts.sampling(gen)
        sources: list[dict[str, Any]] = []
        if use_rag:  # retrieval embeds the question: outside the lock, so decoding goes on meanwhile
            rag_messages, sources = self.documents.rag_messages(question, top_k, min_score)
            conversation = [*conversation[:-1], *rag_messages]
        with self._lock:
            backend = self._model().backend
            choice = self.adapters._choose(gen.get("adapter", ACTIVE), prompt=question)
            rendered, templated = self.prompts.render(conversation, gen)
            prepared = PreparedRequest(rendered, templated, params, choice, sources, started)
            self._pin(prepared)
            prompt_tokens = backend.count_tokens(rendered)
            if prompt_tokens >= params.max_context:
                self.release_request(prepared)
                raise ContextOverflowError(prompt_tokens, params.max_context)
            return prepared

    def finish_request(self, prepared: PreparedRequest, text: str, prompt_tokens: int, completion_tokens: int,
                       finish_reason: str) -> QueryResult:
        """The ``QueryResult`` of a finished request (latency since it was prepared); unpins its adapters."""
        with self._lock:
            self.release_request(prepared)
            result = self._result(text, prompt_tokens, completion_tokens, finish_reason, prepared.params,
                                  prepared.started, prepared.choice)
            result.sources = prepared.sources
            return result

    def release_request(self, prepared: PreparedRequest) -> None:
        """Unpin the adapters of a request that ends without a result (cancelled, failed); idempotent."""
        with self._lock:
            if prepared.released:
                return
            prepared.released = True
            self._busy_adapters.subtract(self._names_of(prepared.choice))
            self._busy_adapters += Counter()  # drop the zero counts

    def adapter_available(self, target: str | None) -> bool:
        """Whether the model-level adapter ``target`` (None: base) is still in the model."""
        with self._lock:
            return target is None or self.adapters.is_loaded(target)

    def _pin(self, prepared: PreparedRequest) -> None:
        self._busy_adapters.update(self._names_of(prepared.choice))

    @staticmethod
    def _names_of(choice: AdapterChoice) -> list[str]:
        names = list(choice.weights)
        if choice.target is not None and choice.target not in names:
            names.append(choice.target)
        return names

    def busy_adapters(self) -> set[str]:
        """Adapters pinned by prepared, unfinished requests (never evicted by the LRU cache)."""
        return {name for name, count in self._busy_adapters.items() if count > 0}
