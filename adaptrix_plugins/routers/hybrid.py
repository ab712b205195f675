"""Hybrid router: a weighted ensemble of other routers (keyword, semantic, classifier by default).

Each member's score is first put on a common scale relative to that member's own threshold
(``min(1, score / (2 * threshold))``, so 0.5 means "exactly at threshold"); the hybrid score is the
weighted mean, selected at 0.5 unless configured otherwise. Its settings live in ``plugins.hybrid``
(:class:`HybridSettings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adaptrix_core.plugin import (
    AdapterCard,
    ConfigError,
    RouterResources,
    RouterSettings,
    RoutingDecision,
    default_thresholds,
    hookimpl,
    select,
)

DEFAULT_THRESHOLD = 0.5


class HybridSettings(BaseModel):
    """``plugins.hybrid`` in the config."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: {"keyword": 0.2, "semantic": 0.3, "classifier": 0.5},
        description="Weight of each member router's scores in the hybrid score.",
    )


class HybridRouter:
    """Weighted mean of member routers' threshold-relative scores."""

    name = "hybrid"

    def __init__(self, settings: RouterSettings, resources: RouterResources):
        own = resources.plugin_settings(self.name, HybridSettings)
        weights = {name: float(w) for name, w in own.weights.items() if w > 0 and name != self.name}
        if not weights or resources.make_router is None:
            raise ConfigError("The hybrid router needs plugins.hybrid.weights naming at least one other router.")
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
