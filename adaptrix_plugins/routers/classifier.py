"""Classifier router: a small MLP over prompt embeddings, trained with cross-entropy.

Labels are the candidate adapters plus ``base``. By default it is fitted on every adapter's example
prompts (from its metadata) and Adaptrix's off-topic prompts labelled ``base``; ``fit`` takes other
labelled data. The head is saved as safetensors with a JSON description (labels, fingerprints) and
refitted automatically when the candidate adapters change. Several adapters whose probabilities
pass the threshold are selected together (multi-label output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptrix_core import hookimpl
from adaptrix_core.config import RouterSettings
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing.selection import (
    BASE_LABEL,
    AdapterCard,
    RouterResources,
    candidates_fingerprint,
    default_thresholds,
    labelled_examples,
    off_topic_prompts,
    read_state,
    select,
    write_state,
)

DEFAULT_THRESHOLD = 0.3
HIDDEN = 256


def _head(dimension: int, labels: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dimension, HIDDEN), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(HIDDEN, labels))


class ClassifierRouter:
    """Cross-entropy-trained MLP head on all-MiniLM-L6-v2 embeddings."""

    name = "classifier"

    def __init__(self, settings: RouterSettings, resources: RouterResources):
        self.settings = settings
        self.resources = resources
        self._model = None
        self._labels: list[str] = []
        self._fingerprint: str | None = None

    @property
    def weights_file(self):
        return self.resources.state_dir / "classifier.safetensors"

    @property
    def state_file(self):
        return self.resources.state_dir / "classifier.json"

    def _ensure_fitted(self, candidates: Sequence[AdapterCard]) -> None:
        fingerprint = candidates_fingerprint(candidates)
        if self._model is not None and self._fingerprint == fingerprint:
            return
        state = read_state(self.state_file)
        if state and state.get("candidates") == fingerprint and self.weights_file.is_file():
            self._load(state)
            return
        self.fit(labelled_examples(candidates, off_topic_prompts()), candidates)

    def _load(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        model = _head(int(state["dimension"]), len(state["labels"]))
        model.load_state_dict(load_file(str(self.weights_file)))
        self._model, self._labels, self._fingerprint = model.eval(), list(state["labels"]), state["candidates"]

    def fit(self, examples: Sequence[tuple[str, str]], candidates: Sequence[AdapterCard], epochs: int = 300,
            seed: int = 0) -> dict[str, Any]:
        """Train the head on (prompt, label) pairs (labels: candidate names or 'base') and save it."""
        import torch
        from safetensors.torch import save_file

        labels = sorted(card.name for card in candidates) + [BASE_LABEL]
        index = {label: i for i, label in enumerate(labels)}
        rows = [(prompt, index[label]) for prompt, label in examples if label in index]
        vectors = torch.from_numpy(self.resources.embedder.encode([prompt for prompt, _ in rows]))
        targets = torch.tensor([label for _, label in rows])
        counts = torch.bincount(targets, minlength=len(labels)).clamp(min=1).float()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = _head(vectors.shape[1], len(labels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
        loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (len(labels) * counts))
        model.train()
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = loss_fn(model(vectors), targets)
            loss.backward()
            optimizer.step()
        model.eval()
        torch.random.set_rng_state(generator_state)
        with torch.no_grad():
            accuracy = float((model(vectors).argmax(dim=1) == targets).float().mean())
        fingerprint = candidates_fingerprint(candidates)
        self.resources.state_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(self.weights_file))
        write_state(self.state_file, {"labels": labels, "dimension": int(vectors.shape[1]), "candidates": fingerprint,
                                      "examples": len(rows), "train_accuracy": accuracy, "final_loss": float(loss.detach())})
        self._model, self._labels, self._fingerprint = model, labels, fingerprint
        return {"router": self.name, "labels": labels, "examples": len(rows), "train_accuracy": accuracy}

    def route(self, prompt: str, candidates: Sequence[AdapterCard]) -> RoutingDecision:
        import torch

        self._ensure_fitted(candidates)
        vector = torch.from_numpy(self.resources.embedder.encode([prompt]))
        with torch.no_grad():
            probabilities = torch.softmax(self._model(vector), dim=1)[0].tolist()
        by_label = dict(zip(self._labels, probabilities))
        scores = {card.name: float(by_label.get(card.name, 0.0)) for card in candidates}
        thresholds = default_thresholds(candidates, DEFAULT_THRESHOLD, self.settings)
        base = by_label.get(BASE_LABEL, 0.0)
        if base >= max(scores.values(), default=0.0):
            thresholds = {name: max(t, base + 1e-9) for name, t in thresholds.items()}
        return select(self.name, scores, thresholds, self.settings, {"base_probability": round(base, 4)})


@hookimpl
def register_routers(register):
    register("classifier", ClassifierRouter)
