"""``RouterService``: routing prompts to adapters with router plugins (``adapter="auto"``).

It needs the adapter store (the candidates' metadata) and the shared embedder, never the language
model: ``adaptrix router ...`` and the server's routing work without loading one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.config import RouterSettings
from adaptrix_core.errors import ConfigError, TrainingDataError
from adaptrix_core.jsonio import read_jsonl
from adaptrix_core.protocols import Router, RoutingDecision
from adaptrix_core.routing.selection import BASE_LABEL, AdapterCard, RouterResources, labelled_examples, off_topic_prompts


class RouterService:
    """Builds router plugins on demand and routes, fits and evaluates them over the store's adapters.

    ``registry`` returns the plugin registry (collected once by the caller); ``embedder`` returns the
    shared sentence-embedding model (loaded on first use); ``plugin_options`` is the config's
    ``plugins`` section, each router reading its own entry.
    """

    def __init__(self, settings: RouterSettings, store: AdapterManager, registry: Callable[[], Any],
                 embedder: Callable[[], Any], plugin_options: Mapping[str, Mapping[str, Any]] | None = None):
        self.settings = settings
        self.store = store
        self._registry = registry
        self._embedder = embedder
        self._plugin_options = dict(plugin_options or {})
        self._routers: dict[str, Router] = {}
        self._resources: dict[str, RouterResources] = {}
        self._cards: _Cards | None = None
        self._lock = threading.RLock()

    @property
    def state_dir(self) -> Path:
        """Where fitted routers keep their state: ``router.state_dir``, else ``.routing`` in the store."""
        return Path(self.settings.state_dir or self.store.directory / ".routing").expanduser()

    def registered(self) -> list[str]:
        """Names of the registered routers."""
        return sorted(self._registry().routers)

    def get_router(self, name: str | None = None) -> Router:
        """The router plugin ``name`` (default: the configured one), built once per service."""
        name = name or self.settings.name
        if not name:
            raise ConfigError(f"No router is configured: pass router= one of {', '.join(self.registered()) or 'none'}.")
        with self._lock:
            if name not in self._routers:
                try:
                    factory = self._registry().factory("routers", name)
                except KeyError:
                    raise ConfigError(f"Router {name!r} is not registered. Registered routers: "
                                      f"{', '.join(self.registered()) or 'none'}.") from None
                resources = RouterResources(self._embedder, self.state_dir, make_router=self.get_router,
                                            options=self._plugin_options.get(name, {}))
                self._routers[name] = factory(self.settings, resources)
            return self._routers[name]

    def candidates(self) -> list[AdapterCard]:
        """Cards of every valid adapter in the store.

        Re-read at once for changes made through this service's store and for adapters added or
        removed (the folder's own mtime). Edits of an adapter's files by another process are found
        by checking every file's mtime (about 1 ms at 1,000 adapters), at most every
        ``router.refresh_interval`` seconds (0: before every request).
        """
        store = self.store
        folder = _mtime(store.directory)
        with self._lock:
            cached = self._cards
            if (cached is not None and cached.revision == store.revision and cached.folder == folder
                    and time.monotonic() - cached.checked < self.settings.refresh_interval):
                return list(cached.cards)
            revision, checked = store.revision, time.monotonic()
            root = os.fspath(store.directory)  # plain strings: pathlib would triple the check's cost
            stamp = tuple((name, _mtime(f"{root}/{name}/adaptrix.json"), _mtime(f"{root}/{name}/adapter_model.safetensors"))
                          for name in store.names())
            if cached is None or cached.stamp != stamp or cached.revision != revision:
                extra = self.settings.keywords
                cards = [AdapterCard.from_metadata(listing.metadata, extra.get(listing.name, ()))
                         for listing in store.list() if listing.metadata is not None]
            else:
                cards = cached.cards
            self._cards = _Cards(stamp, revision, folder, checked, cards)
            return list(cards)

    def route(self, prompt: str, router: str | None = None) -> RoutingDecision:
        """Which adapter(s) ``router`` picks for ``prompt``, with every candidate's score."""
        instance = self.get_router(router)
        candidates = self.candidates()
        if not candidates:
            return RoutingDecision({}, {}, 1.0, instance.name, f"no valid adapters in {str(self.store.directory)!r}")
        return instance.route(prompt, candidates)

    def fit(self, router: str | None = None, data: Any = None) -> dict[str, Any]:
        """Train the classifier / calibrate semantic thresholds on labelled prompts.

        ``data``: JSONL path or dicts with ``prompt`` and ``label`` (an adapter name or ``base``);
        default: each adapter's example prompts plus Adaptrix's off-topic prompts as ``base``.
        """
        instance = self.get_router(router)
        if not hasattr(instance, "fit"):
            raise ConfigError(f"Router {instance.name!r} has nothing to fit.")
        candidates = self.candidates()
        examples = load_labelled(data) if data is not None else labelled_examples(candidates, off_topic_prompts())
        return instance.fit([(p, labels[0]) if isinstance(labels, list) else (p, labels) for p, labels in examples],
                            candidates)

    def evaluate(self, data: Any, router: str | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, confusion matrix and latency (p50/p95 ms) of a router on labelled prompts."""
        from adaptrix_core.routing.evaluation import score_routing

        instance = self.get_router(router)
        candidates = self.candidates()
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


@dataclass(frozen=True)
class _Cards:
    """The cards read from the store, and what they were read from (files' mtimes, store revision)."""

    stamp: tuple
    revision: int
    folder: float
    checked: float
    cards: list[AdapterCard]


def _mtime(path: str | Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def load_labelled(data: Any) -> list[tuple[str, Any]]:
    """(prompt, label) pairs from JSONL or dicts; a label is an adapter name, a list of names, or 'base'."""
    if isinstance(data, (str, Path)):
        records = [record for _, record in read_jsonl(Path(data), TrainingDataError, "labelled data file")]
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
