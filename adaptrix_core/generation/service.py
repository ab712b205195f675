"""``Generator``: answering prompts with the chosen adapters — one, a left-padded batch, or a stream.

It composes the engine's services: ``PromptBuilder`` (templates, sampling), ``AdapterPool`` (which
adapter a request runs with) and ``DocumentIndex`` (RAG context), over the loaded backend.
Conversation memory stays with the engine: callers pass the history to use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from adaptrix_core.adapters.choice import ACTIVE, AdapterChoice
from adaptrix_core.errors import InvalidGenerationParameterError, InvalidPromptError
from adaptrix_core.generation.params import check_messages, check_prompt, stream_until_stop, trim_at_stop
from adaptrix_core.types import QueryResult, SamplingParams


class Generator:
    """Generation over the loaded model (``model()`` returns the ``LoadedModel``), under ``lock``."""

    def __init__(self, prompts: Any, adapters: Any, documents: Any, model: Callable[[], Any], lock: Any):
        self.prompts, self.adapters, self.documents = prompts, adapters, documents
        self._model, self._lock = model, lock

    def result(self, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str,
               params: SamplingParams, started: float, choice: AdapterChoice) -> QueryResult:
        """The ``QueryResult`` of one answer (latency measured from ``started``)."""
        loaded = self._model()
        return QueryResult(
            text=text, model_id=loaded.model_id, family=loaded.family.name, backend=loaded.backend.name,
            adapters=list(choice.weights), adapter_weights=dict(choice.weights), routing=choice.routing,
            latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, finish_reason=finish_reason,
            generation={"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                        "top_p": params.top_p, "seed": params.seed, "stop": list(params.stop)},
        )

    def complete(self, messages: list[dict[str, str]], gen: Mapping[str, Any], route_on: str | None = None) -> QueryResult:
        """Answer the last turn of ``messages`` (already checked); ``route_on`` is what ``auto`` routes on."""
        started = time.perf_counter()
        with self._lock:
            backend = self._model().backend
            params = self.prompts.sampling(gen)
            choice = self.adapters._choose(gen.get("adapter", ACTIVE), prompt=route_on or messages[-1]["content"])
            prompt, templated = self.prompts.render(messages, gen)
            completion = backend.generate([prompt], params, templated=templated, adapters=[choice.target])[0]
        text, stopped = trim_at_stop(completion.text, params.stop)
        return self.result(text, completion.prompt_tokens, completion.completion_tokens,
                           "stop" if stopped else completion.finish_reason, params, started, choice)

    def query(self, prompt: str, history: Sequence[dict[str, str]] = (), use_rag: bool = False,
              top_k: int | None = None, min_score: float | None = None, **gen: Any) -> QueryResult:
        """Answer ``prompt`` after ``history``; with ``use_rag`` the best passages go into the prompt."""
        conversation = [*history, {"role": "user", "content": check_prompt(prompt)}]
        sources: list[dict[str, Any]] = []
        if use_rag:
            with self._lock:
                self.prompts.sampling(gen)  # reject bad arguments before retrieving
            rag_messages, sources = self.documents.rag_messages(prompt, top_k, min_score)
            conversation = [*conversation[:-1], *rag_messages]
        result = self.complete(conversation, gen, route_on=prompt)
        result.sources = sources
        return result

    def chat(self, messages: Sequence[Mapping[str, str]], **gen: Any) -> QueryResult:
        """Answer the last user turn of OpenAI-style ``messages``."""
        return self.complete(check_messages(messages), gen)

    def batch(self, prompts: Sequence[str], adapters: Sequence[Any] | None = None, **gen: Any) -> list[QueryResult]:
        """Answer several independent prompts in one left-padded batch, each with its own adapter."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise InvalidPromptError("generate_batch() takes a non-empty list of prompt strings.")
        if adapters is not None and (isinstance(adapters, (str, Mapping)) or len(adapters) != len(prompts)):
            raise InvalidGenerationParameterError(
                f"adapters must be a list with one entry per prompt ({len(prompts)}), got {adapters!r}."
            )
        started = time.perf_counter()
        pool = self.adapters
        with self._lock:
            backend = self._model().backend
            params = self.prompts.sampling(gen)
            specs = list(adapters) if adapters is not None else [gen.get("adapter", ACTIVE)] * len(prompts)
            resolved = [pool._resolve_auto(spec, prompt) for prompt, spec in zip(prompts, specs)]
            pinned: list[str] = []
            for spec, _ in resolved:
                pinned.extend(pool._parse_adapter(spec))
            choices = [pool._choose(spec, pinned=pinned) for spec, _ in resolved]
            choices = [AdapterChoice(c.target, c.weights, routing) for c, (_, routing) in zip(choices, resolved)]
            rendered = [self.prompts.render([{"role": "user", "content": check_prompt(p)}], gen) for p in prompts]
            templated = rendered[0][1]
            completions = backend.generate([text for text, _ in rendered], params, templated=templated,
                                           adapters=[choice.target for choice in choices])
            pool._evict(keep=())
        results = []
        for completion, choice in zip(completions, choices):
            text, stopped = trim_at_stop(completion.text, params.stop)
            results.append(self.result(text, completion.prompt_tokens, completion.completion_tokens,
                                       "stop" if stopped else completion.finish_reason, params, started, choice))
        return results

    def stream(self, prompt: str, history: Sequence[dict[str, str]] = (), **gen: Any) -> tuple[Iterator[str], Any]:
        """(pieces, lock): the answer's text pieces with stop strings handled. The caller iterates them
        holding the returned lock, so that the model serves one stream at a time."""
        with self._lock:
            backend = self._model().backend
            params = self.prompts.sampling(gen)
            choice = self.adapters._choose(gen.get("adapter", ACTIVE), prompt=prompt)
            conversation = [*history, {"role": "user", "content": check_prompt(prompt)}]
            rendered, templated = self.prompts.render(conversation, gen)
            pieces = backend.stream(rendered, params, templated=templated, adapter=choice.target)
        return stream_until_stop(pieces, params.stop), self._lock
