"""Routing prompts to adapters (``adapter="auto"``): router plugins, candidates, fitting, evaluation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from adaptrix_core.errors import ConfigError, TrainingDataError
from adaptrix_core.protocols import Router, RoutingDecision
from adaptrix_core.routing import BASE_LABEL, AdapterCard, RouterResources, labelled_examples, off_topic_prompts


class RoutingMixin:
    """Routing methods of the engine (see ``ModularAdaptrixEngine``)."""

    def _init_routing(self, router: str | None) -> None:
        if router is not None:
            self.config = self.config.model_copy(update={"router": self.config.router.model_copy(update={"name": router})})
        self._routers: dict[str, Router] = {}
        self._router_resources: RouterResources | None = None
        self._cards: tuple[tuple, list[AdapterCard]] | None = None

    @property
    def embedder(self):
        """The shared sentence-embedding model (loaded on first use; RAG and routers use the same one)."""
        return self._resources().embedder

    def _resources(self) -> RouterResources:
        if self._router_resources is None:
            from adaptrix_core.embeddings import get_embedder

            settings = self.config.router
            state_dir = Path(settings.state_dir or Path(self.config.adapters.directory) / ".routing").expanduser()
            self._router_resources = RouterResources(lambda: get_embedder(settings.embedding_model), state_dir,
                                                     make_router=self.get_router)
        return self._router_resources

    def get_router(self, name: str | None = None) -> Router:
        """The router plugin ``name`` (default: the configured one), built once per engine."""
        name = name or self.config.router.name
        if not name:
            raise ConfigError("No router is configured: pass router='keyword', 'semantic', 'classifier' or 'hybrid'.")
        if name not in self._routers:
            registry = self._registry_or_collect()
            if name not in registry.routers:
                raise ConfigError(f"Router {name!r} is not registered. Registered routers: "
                                  f"{', '.join(sorted(registry.routers)) or 'none'}.")
            self._routers[name] = registry.routers[name](self.config.router, self._resources())
        return self._routers[name]

    def _registry_or_collect(self):
        if self._registry is None:
            from adaptrix_core.registry import collect

            self._registry = collect()
        return self._registry

    def routing_candidates(self) -> list[AdapterCard]:
        """Cards of every valid adapter in the store (refreshed when an adapter's metadata changes)."""
        manager = self.adapter_manager
        stamp = tuple((name, _mtime(manager.directory / name / "adaptrix.json"), _mtime(manager.directory / name / "adapter_model.safetensors"))
                      for name in manager.names())
        if self._cards is None or self._cards[0] != stamp:
            extra = self.config.router.keywords
            cards = [AdapterCard.from_metadata(listing.metadata, extra.get(listing.name, ()))
                     for listing in manager.list() if listing.metadata is not None]
            self._cards = (stamp, cards)
        return list(self._cards[1])

    def route(self, prompt: str, router: str | None = None) -> RoutingDecision:
        """Which adapter(s) ``router`` picks for ``prompt``, with every candidate's score."""
        instance = self.get_router(router)
        candidates = self.routing_candidates()
        if not candidates:
            return RoutingDecision({}, {}, 1.0, instance.name, f"no valid adapters in {str(self.adapter_manager.directory)!r}")
        return instance.route(prompt, candidates)

    def fit_router(self, router: str | None = None, data: Any = None) -> dict[str, Any]:
        """Train the classifier / calibrate semantic thresholds on labelled prompts.

        ``data``: JSONL path or dicts with ``prompt`` and ``label`` (an adapter name or ``base``);
        default: each adapter's example prompts plus Adaptrix's off-topic prompts as ``base``.
        """
        instance = self.get_router(router)
        if not hasattr(instance, "fit"):
            raise ConfigError(f"Router {instance.name!r} has nothing to fit.")
        candidates = self.routing_candidates()
        examples = load_labelled(data) if data is not None else labelled_examples(candidates, off_topic_prompts())
        return instance.fit([(p, labels[0]) if isinstance(labels, list) else (p, labels) for p, labels in examples],
                            candidates)

    def evaluate_router(self, data: Any, router: str | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, confusion matrix and latency (p50/p95 ms) of a router on labelled prompts."""
        from adaptrix_core.router_eval import score_routing

        instance = self.get_router(router)
        candidates = self.routing_candidates()
        examples = load_labelled(data)
        instance.route(examples[0][0], candidates)  # warm-up: embeddings, fitted state
        predictions, latencies = [], []
        for prompt, _ in examples:
            started = time.perf_counter()
            decision = instance.route(prompt, candidates)
            latencies.append((time.perf_counter() - started) * 1000)
            predictions.append(sorted(decision.selected, key=decision.selected.get, reverse=True) or [BASE_LABEL])
        labels = [card.name for card in candidates] + [BASE_LABEL]
        return {"router": instance.name, **score_routing(examples, predictions, latencies, labels)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def load_labelled(data: Any) -> list[tuple[str, Any]]:
    """(prompt, label) pairs from JSONL or dicts; a label is an adapter name, a list of names, or 'base'."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise TrainingDataError(f"Labelled data file {str(path)!r} does not exist.")
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TrainingDataError(f"{path.name} line {number} is not valid JSON: {exc.msg}.") from None
    else:
        records = list(data)
    pairs = []
    for index, record in enumerate(records):
        prompt, label = (record.get("prompt"), record.get("label")) if isinstance(record, dict) else (None, None)
        if not isinstance(prompt, str) or not (isinstance(label, str) or (isinstance(label, list) and label)):
            raise TrainingDataError(f"Labelled example {index + 1} needs a string 'prompt' and a 'label'.")
        pairs.append((prompt, label))
    if not pairs:
        raise TrainingDataError("The labelled data holds no examples.")
    return pairs

