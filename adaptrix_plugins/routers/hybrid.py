"""Hybrid router: a weighted ensemble of other routers (keyword, semantic, classifier by default).

Each member's score is first put on a common scale relative to that member's own threshold
(``min(1, score / (2 * threshold))``, so 0.5 means "exactly at threshold"); the hybrid score is the
weighted mean, selected at 0.5 unless configured otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

from adaptrix_core import hookimpl
from adaptrix_core.config import RouterSettings
from adaptrix_core.errors import ConfigError
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing import AdapterCard, RouterResources, default_thresholds, select

DEFAULT_THRESHOLD = 0.5


class HybridRouter:
    """Weighted mean of member routers' threshold-relative scores."""

    name = "hybrid"

    def __init__(self, settings: RouterSettings, resources: RouterResources):
        weights = {name: float(w) for name, w in settings.hybrid_weights.items() if w > 0 and name != self.name}
        if not weights or resources.make_router is None:
            raise ConfigError("The hybrid router needs router.hybrid_weights naming at least one other router.")
        self.settings = settings
        self.weights = weights
        self.members = {name: resources.make_router(name) for name in weights}

    def route(self, prompt: str, candidates: Sequence[AdapterCard]) -> RoutingDecision:
        combined = {card.name: 0.0 for card in candidates}
        parts: dict[str, Any] = {}
        total = sum(self.weights.values())
        for name, router in self.members.items():
            decision = router.route(prompt, candidates)
            member_thresholds = decision.details.get("thresholds", {})
            parts[name] = {"selected": decision.selected, "scores": {k: round(v, 4) for k, v in decision.scores.items()}}
            for card in candidates:
                threshold = max(member_thresholds.get(card.name, 0.5), 1e-6)
                scaled = min(1.0, decision.scores.get(card.name, 0.0) / (2 * threshold))
                combined[card.name] += self.weights[name] * scaled / total
        thresholds = default_thresholds(candidates, DEFAULT_THRESHOLD, self.settings)
        return select(self.name, combined, thresholds, self.settings, {"members": parts})

    def fit(self, examples: Sequence[tuple[str, str]], candidates: Sequence[AdapterCard]) -> dict[str, Any]:
        """Fit every member that can be fitted."""
        return {name: router.fit(examples, candidates) for name, router in self.members.items() if hasattr(router, "fit")}


@hookimpl
def register_routers(register):
    register("hybrid", HybridRouter)
