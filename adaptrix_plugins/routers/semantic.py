"""Semantic router: cosine similarity between the prompt and each adapter's description and examples.

An adapter's score is the mean of its three best cosine similarities (all-MiniLM-L6-v2 embeddings)
over its description and example prompts (and their sentences, see ``routing.prompt_views``).
Embeddings are cached per adapter and recomputed when its metadata changes; the scoring of a
whole candidate set is one matrix product (see ``_Stacked``). ``fit`` calibrates one
threshold per adapter from labelled prompts: just above the 99th percentile of the scores that
prompts of other labels (other adapters, off-topic) get, so about 1% of them would be misrouted to
it. Thresholds are saved as JSON in the router state folder; with no saved calibration for the
current adapters, the router calibrates itself on first use from the adapters' examples and
Adaptrix's off-topic prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    """Scores adapters by embedding similarity; thresholds calibrated per adapter.

    Scoring is one matrix product of the prompt's embedding with every text of every candidate,
    stacked once per candidate set (and reused while the engine hands over the same cards), so a
    store of thousands of adapters costs about a millisecond besides embedding the prompt.
    """

    name = "semantic"

    def __init__(self, settings: RouterSettings, resources: RouterResources):
        self.settings = settings
        self.resources = resources
        self._vectors: dict[str, tuple[str, Any, tuple[str, ...]]] = {}
        self._saved: dict[str, Any] | None = None
        self._stacked: _Stacked | None = None

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

    def _stack(self, candidates: Sequence[AdapterCard]) -> _Stacked:
        stacked = self._stacked
        if stacked is not None and stacked.holds(candidates):
            return stacked
        parts = [self._card_vectors(card) for card in candidates]
        self._stacked = _Stacked(tuple(candidates), parts)
        return self._stacked

    def _scores(self, vectors, candidates: Sequence[AdapterCard], exclude: Sequence[str | None] = ()):
        """(prompts x candidates) scores; ``exclude[i]`` is a text left out of every card for prompt i."""
        return self._stack(candidates).scores(vectors, exclude)

    def thresholds(self, candidates: Sequence[AdapterCard]) -> dict[str, float]:
        """Calibrated thresholds where the saved calibration matches the adapter, else the default."""
        stacked = self._stack(candidates)
        if stacked.thresholds is None or stacked.thresholds[0] is not self._state:
            stacked.thresholds = (self._state, self._compute_thresholds(candidates))
        return dict(stacked.thresholds[1])

    def _compute_thresholds(self, candidates: Sequence[AdapterCard]) -> dict[str, float]:
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
        stacked = self._stack(candidates)
        if self.settings.threshold is None and (self._state or {}).get("candidates") != stacked.fingerprint:
            self.fit(labelled_examples(candidates, off_topic_prompts()), candidates)  # first use, or adapters changed
        vector = self.resources.embedder.encode([prompt])
        row = stacked.scores(vector)[0]
        scores = dict(zip(stacked.names, row.tolist()))
        return select(self.name, scores, self.thresholds(candidates), self.settings)

    def fit(self, examples: Sequence[tuple[str, str]], candidates: Sequence[AdapterCard]) -> dict[str, Any]:
        """Calibrate per-adapter thresholds on (prompt, label) pairs; label 'base' means no adapter."""
        import numpy as np

        prompts = [prompt for prompt, _ in examples]
        labels = np.array([label for _, label in examples], dtype=object)
        scores = self._scores(self.resources.embedder.encode(prompts), candidates, exclude=prompts)
        thresholds = {}
        for column, card in enumerate(candidates):
            negatives = scores[labels != card.name, column]
            cut = float(np.quantile(negatives, NEGATIVE_QUANTILE)) + MARGIN if negatives.size else DEFAULT_THRESHOLD
            thresholds[card.name] = round(min(0.9, max(0.15, cut)), 4)
        self._saved = {"thresholds": thresholds, "fingerprints": {c.name: c.fingerprint for c in candidates},
                       "candidates": candidates_fingerprint(candidates), "examples": len(examples)}
        write_state(self.state_file, self._saved)
        return {"router": self.name, "thresholds": thresholds, "examples": len(examples)}


class _Stacked:
    """Every text vector of a candidate set in one matrix; each card's rows listed in a padded table.

    Cards are grouped by their number of texts (up to the next power of two), so that a few cards
    with hundreds of example prompts do not widen the table of all the others.
    """

    PAD = -2.0  # below any cosine similarity
    CHUNK = 256  # prompts scored at once (bounds memory while fitting on thousands of examples)

    def __init__(self, cards: tuple[AdapterCard, ...], parts: list[tuple[Any, tuple[str, ...]]]):
        import numpy as np

        self.cards = cards
        self.names = [card.name for card in cards]
        self.fingerprint = candidates_fingerprint(cards)
        self.thresholds: tuple[Any, dict[str, float]] | None = None
        dimension = next((vectors.shape[1] for vectors, _ in parts if len(vectors)), 1)
        matrix = np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1, dimension) for v, _ in parts]
                                + [np.zeros((1, dimension), np.float32)])
        self.columns_t = np.ascontiguousarray(matrix.T)  # prompt @ this is 5x faster than @ a transposed view
        self._torch_columns = _as_torch(self.columns_t)
        self.pad_row = matrix.shape[0] - 1  # a zero row whose score is replaced by PAD
        self.rows_of_text: dict[str, list[int]] = {}
        groups: dict[int, list[tuple[int, range]]] = {}
        start = 0
        for column, (_, texts) in enumerate(parts):
            rows = range(start, start + len(texts))
            for row, text in zip(rows, texts):
                self.rows_of_text.setdefault(text, []).append(row)
            width = 1 << max(0, len(texts) - 1).bit_length()
            groups.setdefault(max(width, TOP), []).append((column, rows))
            start += len(texts)
        self.groups = []  # (columns, slots table, texts per card) per width
        for width, members in sorted(groups.items()):
            slots = np.full((len(members), width), self.pad_row, dtype=np.int64)
            for line, (_, rows) in enumerate(members):
                slots[line, :len(rows)] = np.asarray(rows, dtype=np.int64)
            columns = np.array([column for column, _ in members], dtype=np.int64)
            counts = np.array([max(1, len(rows)) for _, rows in members], dtype=np.float32)
            self.groups.append((columns, slots, counts))

    def _product(self, block):
        # torch's matrix product where torch is loaded (the embedder runs on it): numpy's OpenBLAS threads
        # next to torch's were measured 13x slower for this one product (7.7 vs 0.4 ms at 5,000 texts).
        import numpy as np

        if self._torch_columns is None:
            return block @ self.columns_t
        import torch

        return (torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)) @ self._torch_columns).numpy()

    def holds(self, cards: Sequence[AdapterCard]) -> bool:
        """True for the very card objects this stack was built from (the engine reuses them while unchanged)."""
        return len(cards) == len(self.cards) and all(a is b for a, b in zip(cards, self.cards))

    def scores(self, vectors, exclude: Sequence[str | None] = ()):
        """Each card's score: the mean of its ``TOP`` best similarities (of all of them when it has fewer)."""
        import numpy as np

        out = np.zeros((vectors.shape[0], len(self.cards)), dtype=np.float32)
        for begin in range(0, vectors.shape[0], self.CHUNK):
            block = vectors[begin:begin + self.CHUNK]
            similarity = self._product(block)
            similarity[:, self.pad_row] = self.PAD
            for row, text in enumerate(exclude[begin:begin + self.CHUNK]):
                if text is not None and text in self.rows_of_text:
                    similarity[row, self.rows_of_text[text]] = -1.0
            for columns, slots, counts in self.groups:
                table = similarity[:, slots]  # prompts x cards x width
                best = np.partition(table, table.shape[2] - TOP, axis=2)[:, :, -TOP:]
                taken = np.minimum(counts, TOP)
                total = best.sum(axis=2) - self.PAD * (TOP - taken)  # pads fill the top of cards with < TOP texts
                out[begin:begin + len(block), columns] = np.clip(total / taken, 0.0, 1.0)
        return out


def _as_torch(array):
    """``array`` as a torch tensor sharing its memory, or None where torch is not imported (numpy is used then)."""
    import sys

    torch = sys.modules.get("torch")
    return None if torch is None else torch.from_numpy(array)


@hookimpl
def register_routers(register):
    register("semantic", SemanticRouter)
