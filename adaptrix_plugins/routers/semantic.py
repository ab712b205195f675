"""Semantic router: cosine similarity between the prompt and each adapter's description and examples.

An adapter's score is the mean of its three best cosine similarities (all-MiniLM-L6-v2 embeddings).
Embeddings are cached per adapter and recomputed when its metadata changes. ``fit`` calibrates one
threshold per adapter on labelled prompts (the F1-best cut, leaving each prompt out of its own
adapter's examples) and saves them as JSON in the router state folder.
"""

from __future__ import annotations

from typing import Any, Sequence

from adaptrix_core import hookimpl
from adaptrix_core.config import RouterSettings
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing import (
    AdapterCard,
    RouterResources,
    candidates_fingerprint,
    default_thresholds,
    read_state,
    select,
    write_state,
)

DEFAULT_THRESHOLD = 0.45
TOP = 3


class SemanticRouter:
    """Scores adapters by embedding similarity; thresholds calibrated per adapter."""

    name = "semantic"

    def __init__(self, settings: RouterSettings, resources: RouterResources):
        self.settings = settings
        self.resources = resources
        self._vectors: dict[str, tuple[str, Any, tuple[str, ...]]] = {}

    @property
    def state_file(self):
        return self.resources.state_dir / "semantic.json"

    def _card_vectors(self, card: AdapterCard):
        cached = self._vectors.get(card.name)
        if cached is None or cached[0] != card.fingerprint:
            texts = tuple(t for t in (card.description, *card.example_prompts) if t.strip()) or (card.name,)
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
        thresholds = default_thresholds(candidates, DEFAULT_THRESHOLD, self.settings)
        if self.settings.threshold is None:
            state = read_state(self.state_file) or {}
            calibrated = state.get("thresholds", {})
            for card in candidates:
                if state.get("fingerprints", {}).get(card.name) == card.fingerprint and card.name in calibrated:
                    thresholds[card.name] = float(calibrated[card.name])
        return thresholds

    def route(self, prompt: str, candidates: Sequence[AdapterCard]) -> RoutingDecision:
        vector = self.resources.embedder.encode([prompt])
        row = self._scores(vector, candidates)[0]
        scores = {card.name: float(score) for card, score in zip(candidates, row)}
        return select(self.name, scores, self.thresholds(candidates), self.settings)

    def fit(self, examples: Sequence[tuple[str, str]], candidates: Sequence[AdapterCard]) -> dict[str, Any]:
        """Calibrate per-adapter thresholds on (prompt, label) pairs; label 'base' means no adapter."""
        prompts = [prompt for prompt, _ in examples]
        vectors = self.resources.embedder.encode(prompts)
        scores = self._scores(vectors, candidates, exclude=prompts)
        thresholds = {}
        for column, card in enumerate(candidates):
            positives = [score for score, (_, label) in zip(scores[:, column], examples) if label == card.name]
            column_scores = sorted(set(float(s) for s in scores[:, column]))
            best = (-1.0, DEFAULT_THRESHOLD)
            for cut in column_scores:
                predicted = scores[:, column] >= cut
                truth = [label == card.name for _, label in examples]
                tp = sum(p and t for p, t in zip(predicted, truth))
                fp = sum(p and not t for p, t in zip(predicted, truth))
                fn = sum(t and not p for p, t in zip(predicted, truth))
                f1 = 2 * tp / max(1, 2 * tp + fp + fn)
                if f1 > best[0] + 1e-9:
                    best = (f1, cut)
            thresholds[card.name] = round(min(0.95, max(0.15, best[1] - 1e-4)), 4) if positives else DEFAULT_THRESHOLD
        write_state(self.state_file, {"thresholds": thresholds, "fingerprints": {c.name: c.fingerprint for c in candidates},
                                      "candidates": candidates_fingerprint(candidates), "examples": len(examples)})
        return {"router": self.name, "thresholds": thresholds, "examples": len(examples)}


@hookimpl
def register_routers(register):
    register("semantic", SemanticRouter)
