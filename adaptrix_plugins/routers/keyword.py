"""Keyword router: TF-IDF weighted keyword matches from each adapter's metadata (and the config).

A keyword found in the prompt (whole words, case-insensitive) adds its inverse document frequency
across adapters, so a word shared by several adapters counts less than a distinctive one. The sum
``s`` maps to a score ``1 - exp(-s)`` in [0, 1).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from adaptrix_core import hookimpl
from adaptrix_core.config import RouterSettings
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing.selection import AdapterCard, RouterResources, default_thresholds, select

DEFAULT_THRESHOLD = 0.6


class KeywordRouter:
    """Scores adapters by the TF-IDF weight of their keywords found in the prompt.

    With many adapters (a gateway's store holds thousands) only the keywords that can match are
    tried: each keyword is filed under its first word, and an ASCII prompt only tries the keywords
    filed under its own words (a whole-word match needs that word). Keywords with other characters,
    and every keyword for a non-ASCII prompt, are always tried, so the scores stay exactly those of
    matching every keyword.
    """

    name = "keyword"

    def __init__(self, settings: RouterSettings, resources: RouterResources | None = None):
        self.settings = settings
        self._cards: tuple[AdapterCard, ...] = ()
        self._compiled: tuple[str, _Index] | None = None

    def _index(self, candidates: Sequence[AdapterCard]) -> _Index:
        # The same card objects as last time (the engine caches them): no fingerprints to recompute.
        if self._compiled is not None and len(candidates) == len(self._cards) and all(
                a is b for a, b in zip(candidates, self._cards)):
            return self._compiled[1]
        key = "|".join(card.fingerprint for card in candidates)
        if self._compiled is None or self._compiled[0] != key:
            self._compiled = (key, _Index.build(candidates, self.settings.keywords))
        self._cards = tuple(candidates)
        return self._compiled[1]

    def route(self, prompt: str, candidates: Sequence[AdapterCard]) -> RoutingDecision:
        totals = {card.name: 0.0 for card in candidates}
        matched: dict[str, int] = dict.fromkeys(totals, 0)
        for name, pattern, idf in self._index(candidates).entries_for(prompt):
            if pattern.search(prompt):
                totals[name] += idf
                matched[name] += 1
        scores = {name: 1.0 - math.exp(-total) for name, total in totals.items()}
        thresholds = default_thresholds(candidates, DEFAULT_THRESHOLD, self.settings)
        return select(self.name, scores, thresholds, self.settings, {"matched": matched})


_WORD = re.compile(r"\w+")


class _Index:
    """Every (adapter, keyword pattern, idf), filed by the keyword's first word (see ``KeywordRouter``)."""

    def __init__(self, entries: list[tuple[str, re.Pattern, float]], by_word: dict[str, list[int]], always: list[int]):
        self.entries, self.by_word, self.always = entries, by_word, always

    @classmethod
    def build(cls, candidates: Sequence[AdapterCard], extra: dict[str, list[str]]) -> _Index:
        keywords = {card.name: {k.lower() for k in (*card.keywords, *extra.get(card.name, ()))} for card in candidates}
        frequency = Counter(word for words in keywords.values() for word in words)
        count = len(candidates)
        entries, by_word, always = [], {}, []
        for card in candidates:
            for word in sorted(keywords[card.name]):
                idf = math.log((1 + count) / (1 + frequency[word])) + 1.0
                pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
                first = _WORD.search(word)
                if first is None or not word.isascii():
                    always.append(len(entries))
                else:
                    by_word.setdefault(first.group(), []).append(len(entries))
                entries.append((card.name, pattern, idf))
        return cls(entries, by_word, always)

    def entries_for(self, prompt: str) -> list[tuple[str, re.Pattern, float]]:
        """The entries that can match ``prompt``, in index order."""
        if not prompt.isascii():
            return self.entries
        positions = list(self.always)
        for word in set(_WORD.findall(prompt.lower())):
            positions.extend(self.by_word.get(word, ()))
        return [self.entries[i] for i in sorted(positions)]


@hookimpl
def register_routers(register):
    register("keyword", KeywordRouter)
