"""Semantic router: cosine similarity between the prompt and each adapter's description and examples.

An adapter's score is the mean of its three best cosine similarities (all-MiniLM-L6-v2 embeddings)
over its description and example prompts (and their sentences, see ``routing.prompt_views``).
Embeddings are cached per adapter and recomputed when its metadata changes. ``fit`` calibrates one
threshold per adapter from labelled prompts: just above the 99th percentile of the scores that
prompts of other labels (other adapters, off-topic) get, so about 1% of them would be misrouted to
it. Thresholds are saved as JSON in the router state folder; with no saved calibration for the
current adapters, the router calibrates itself on first use from the adapters' examples and
Adaptrix's off-topic prompts.
"""

from __future__ import annotations

from typing import Any, Sequence

from adaptrix_core import hookimpl
from adaptrix_core.config import RouterSettings
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing.selection import (
    AdapterCard,
    RouterResources,
    candidates_fingerprint,
    card_texts,
    default_thresholds,
    labelled_examples,
    off_topic_prompts,
    read_state,
    select,
    write_state,
)

DEFAULT_THRESHOLD = 0.45
TOP = 3
NEGATIVE_QUANTILE = 0.99
MARGIN = 0.02


class SemanticRouter:
    """Scores adapters by embedding similarity; thresholds calibrated per adapter."""

    name = "semantic"

    def __init__(self, settings: RouterSettings, resources: RouterResources):
        self.settings = settings
        self.resources = resources
        self._vectors: dict[str, tuple[str, Any, tuple[str, ...]]] = {}
        self._saved: dict[str, Any] | None = None

    @property
    def state_file(self):
        return self.resources.state_dir / "semantic.json"

    def _card_vectors(self, card: AdapterCard):
        cached = self._vectors.get(card.name)
        if cached is None or cached[0] != card.fingerprint:
            texts = tuple(card_texts(card))
            cached = (card.fingerprint, self.resources.embedder.encode(list(texts)), texts)
            self._vectors[card.name] = cached
        return cached[1], cached[2]

    def _scores(self, vectors, candidates: Sequence[AdapterCard], exclude: Sequence[str | None] = ()):
        """(prompts x candidates) scores; ``exclude[i]`` is a text left out of every card for prompt i."""
        import numpy as np

        scores = np.zeros((vectors.shape[0], len(candidates)), dtype=np.float32)
        for column, card in enumerate(candidates):
            card_vectors, texts = self._card_vectors(card)
            similarity = vectors @ card_vectors.T
            for row, text in enumerate(exclude):
                if text is not None:
                    similarity[row, [i for i, t in enumerate(texts) if t == text]] = -1.0
            top = np.sort(similarity, axis=1)[:, -min(TOP, similarity.shape[1]):]
            scores[:, column] = np.clip(top.mean(axis=1), 0.0, 1.0)
        return scores

    def thresholds(self, candidates: Sequence[AdapterCard]) -> dict[str, float]:
        """Calibrated thresholds where the saved calibration matches the adapter, else the default."""
        thresholds = default_thresholds(candidates, DEFAULT_THRESHOLD, self.settings)
        if self.settings.threshold is None:
            state = self._state or {}
            calibrated = state.get("thresholds", {})
            for card in candidates:
                if state.get("fingerprints", {}).get(card.name) == card.fingerprint and card.name in calibrated:
                    thresholds[card.name] = float(calibrated[card.name])
        return thresholds

    @property
    def _state(self) -> dict[str, Any] | None:
        if self._saved is None:
            self._saved = read_state(self.state_file)
        return self._saved

    def route(self, prompt: str, candidates: Sequence[AdapterCard]) -> RoutingDecision:
        if self.settings.threshold is None and (self._state or {}).get("candidates") != candidates_fingerprint(candidates):
            self.fit(labelled_examples(candidates, off_topic_prompts()), candidates)  # first use, or adapters changed
        vector = self.resources.embedder.encode([prompt])
        row = self._scores(vector, candidates)[0]
        scores = {card.name: float(score) for card, score in zip(candidates, row)}
        return select(self.name, scores, self.thresholds(candidates), self.settings)

    def fit(self, examples: Sequence[tuple[str, str]], candidates: Sequence[AdapterCard]) -> dict[str, Any]:
        """Calibrate per-adapter thresholds on (prompt, label) pairs; label 'base' means no adapter."""
        import numpy as np

        prompts = [prompt for prompt, _ in examples]
        scores = self._scores(self.resources.embedder.encode(prompts), candidates, exclude=prompts)
        thresholds = {}
        for column, card in enumerate(candidates):
            negatives = [score for score, (_, label) in zip(scores[:, column], examples) if label != card.name]
            cut = float(np.quantile(negatives, NEGATIVE_QUANTILE)) + MARGIN if negatives else DEFAULT_THRESHOLD
            thresholds[card.name] = round(min(0.9, max(0.15, cut)), 4)
        self._saved = {"thresholds": thresholds, "fingerprints": {c.name: c.fingerprint for c in candidates},
                       "candidates": candidates_fingerprint(candidates), "examples": len(examples)}
        write_state(self.state_file, self._saved)
        return {"router": self.name, "thresholds": thresholds, "examples": len(examples)}


@hookimpl
def register_routers(register):
    register("semantic", SemanticRouter)
