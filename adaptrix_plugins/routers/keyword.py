"""Keyword router: TF-IDF weighted keyword matches from each adapter's metadata (and the config).

A keyword found in the prompt (whole words, case-insensitive) adds its inverse document frequency
across adapters, so a word shared by several adapters counts less than a distinctive one. The sum
``s`` maps to a score ``1 - exp(-s)`` in [0, 1).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from adaptrix_core import hookimpl
from adaptrix_core.config import RouterSettings
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing.selection import AdapterCard, RouterResources, default_thresholds, select

DEFAULT_THRESHOLD = 0.6


class KeywordRouter:
    """Scores adapters by the TF-IDF weight of their keywords found in the prompt."""

    name = "keyword"

    def __init__(self, settings: RouterSettings, resources: RouterResources | None = None):
        self.settings = settings
        self._compiled: tuple[str, list[tuple[str, re.Pattern, float]]] | None = None

    def _index(self, candidates: Sequence[AdapterCard]) -> list[tuple[str, re.Pattern, float]]:
        key = "|".join(card.fingerprint for card in candidates)
        if self._compiled is None or self._compiled[0] != key:
            keywords = {card.name: {k.lower() for k in (*card.keywords, *self.settings.keywords.get(card.name, ()))}
                        for card in candidates}
            count = len(candidates)
            entries = []
            for card in candidates:
                for word in sorted(keywords[card.name]):
                    document_frequency = sum(word in words for words in keywords.values())
                    idf = math.log((1 + count) / (1 + document_frequency)) + 1.0
                    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
                    entries.append((card.name, pattern, idf))
            self._compiled = (key, entries)
        return self._compiled[1]

    def route(self, prompt: str, candidates: Sequence[AdapterCard]) -> RoutingDecision:
        totals = {card.name: 0.0 for card in candidates}
        matched: dict[str, list[str]] = {card.name: [] for card in candidates}
        for name, pattern, idf in self._index(candidates):
            if pattern.search(prompt):
                totals[name] += idf
                matched[name].append(pattern.pattern)
        scores = {name: 1.0 - math.exp(-total) for name, total in totals.items()}
        thresholds = default_thresholds(candidates, DEFAULT_THRESHOLD, self.settings)
        return select(self.name, scores, thresholds, self.settings, {"matched": {k: len(v) for k, v in matched.items()}})


@hookimpl
def register_routers(register):
    register("keyword", KeywordRouter)
