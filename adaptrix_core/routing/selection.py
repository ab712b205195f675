"""Shared pieces of adapter routing: candidate cards, selection from scores, resources for routers.

A router scores every candidate adapter in [0, 1]; :func:`select` turns scores into a decision the
same way for every router: candidates at or above their threshold, best first, at most ``top_k``,
a runner-up only when it scores at least ``multi_ratio`` of the best; weights are the scores
normalised to sum to 1. No candidate above threshold means the base model.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from adaptrix_core.config import RouterSettings
from adaptrix_core.errors import ConfigError
from adaptrix_core.jsonio import write_json_atomic
from adaptrix_core.protocols import RoutingDecision

BASE_LABEL = "base"


@dataclass(frozen=True)
class AdapterCard:
    """What a router knows about one candidate adapter."""

    name: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    example_prompts: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything a router reads changes (used to refresh caches)."""
        payload = json.dumps([self.name, self.description, self.keywords, self.example_prompts])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_metadata(cls, meta: Any, extra_keywords: Sequence[str] = ()) -> AdapterCard:
        return cls(meta.name, meta.description, tuple(dict.fromkeys([*meta.routing.keywords, *extra_keywords])),
                   tuple(meta.routing.example_prompts))


FIT_FORMAT = 2  # bump when what routers learn from changes, so saved fits are redone


def candidates_fingerprint(candidates: Sequence[AdapterCard]) -> str:
    """Identifies a set of candidates (and the fitting format): saved router fits are valid for it only."""
    payload = "|".join(sorted(c.fingerprint for c in candidates)) + f"|format{FIT_FORMAT}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class RouterResources:
    """What the engine lends routers: the shared embedder (loaded on first use), a state folder, a way
    to build other routers (for ensembles) and the router's own settings from ``plugins.<name>``."""

    embedder_loader: Callable[[], Any]
    state_dir: Path
    make_router: Callable[[str], Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    _embedder: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                self._embedder = self.embedder_loader()
            return self._embedder

    def plugin_settings(self, name: str, model: type[SettingsT]) -> SettingsT:
        """``plugins.<name>`` from the config, validated by the plugin's own pydantic ``model``."""
        return validate_plugin_settings(name, model, self.options)


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def validate_plugin_settings(name: str, model: type[SettingsT], options: Mapping[str, Any]) -> SettingsT:
    """Validate a plugin's settings; a bad value is a ``ConfigError`` naming ``plugins.<name>.<field>``."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(f"plugins.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid settings for plugin {name!r}: {problems}.") from None


def select(router: str, scores: Mapping[str, float], thresholds: Mapping[str, float], settings: RouterSettings,
           details: dict[str, Any] | None = None) -> RoutingDecision:
    """Turn candidate scores into a decision (see the module docstring)."""
    details = {**(details or {}), "thresholds": {name: round(float(thresholds.get(name, 1.0)), 4) for name in scores}}
    # Only the passing candidates are ranked: at 1,000 adapters a full sort cost more than the scoring.
    passing = sorted(((name, score) for name, score in scores.items() if score >= thresholds.get(name, 1.0) and score > 0),
                     key=_best_first)
    if not passing:
        best = min(scores.items(), key=_best_first) if scores else (None, 0.0)
        reason = f"no adapter reached its threshold (best: {best[0]} at {best[1]:.2f})" if best[0] else "no adapters"
        confidence = 1.0 - (best[1] / max(thresholds.get(best[0], 1.0), 1e-9)) if best[0] else 1.0
        return RoutingDecision({}, dict(scores), max(0.0, min(1.0, confidence)), router, reason, details)
    top_score = passing[0][1]
    chosen = [passing[0]] + [(n, s) for n, s in passing[1 : settings.top_k] if s >= settings.multi_ratio * top_score]
    total = sum(score for _, score in chosen)
    weights = {name: round(score / total, 4) for name, score in chosen}
    reason = ", ".join(f"{name} {score:.2f} >= {thresholds.get(name, 0):.2f}" for name, score in chosen)
    return RoutingDecision(weights, dict(scores), float(min(1.0, top_score)), router, reason, details)


def _best_first(item: tuple[str, float]) -> tuple[float, str]:
    """Sort key: the highest score first, ties by name."""
    return -item[1], item[0]


def decision_dict(decision: RoutingDecision) -> dict[str, Any]:
    """A JSON-ready view of a decision for ``QueryResult.routing``."""
    return {"router": decision.router, "selected": dict(decision.selected), "confidence": round(decision.confidence, 4),
            "scores": {k: round(v, 4) for k, v in decision.scores.items()}, "reason": decision.reason}


def default_thresholds(candidates: Sequence[AdapterCard], value: float, settings: RouterSettings) -> dict[str, float]:
    """Every candidate at ``settings.threshold`` when set, else at ``value``."""
    threshold = settings.threshold if settings.threshold is not None else value
    return {card.name: threshold for card in candidates}


def read_state(path: Path) -> dict[str, Any] | None:
    """A router's saved JSON state, or None when missing or unreadable (then the router refits)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, data: Mapping[str, Any]) -> None:
    """Write a router's JSON state atomically (readable by everyone, like the adapters)."""
    write_json_atomic(path, dict(data))


_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+")


def prompt_views(text: str, min_words: int = 3) -> list[str]:
    """The prompt and each of its sentences (or colon-separated parts) of at least ``min_words`` words.

    Example prompts of one adapter often share an instruction ("Convert this date to ISO format:")
    followed by the content ("March 5, 2021"); seeing the parts on their own lets routers recognise
    the task when a user phrases the instruction differently.
    """
    parts = [part.strip() for part in _SENTENCE_END.split(text) if len(part.split()) >= min_words]
    return list(dict.fromkeys([text.strip(), *parts]))


def card_texts(card: AdapterCard) -> list[str]:
    """Everything a router learns an adapter from: its description and the views of its examples."""
    texts = [card.description] + [view for prompt in card.example_prompts for view in prompt_views(prompt)]
    return list(dict.fromkeys(text for text in texts if text.strip())) or [card.name]


def labelled_examples(candidates: Sequence[AdapterCard], off_topic: Sequence[str]) -> list[tuple[str, str]]:
    """Default fitting data: each adapter's ``card_texts`` under its name, off-topic prompts as ``base``."""
    rows = [(text, card.name) for card in candidates for text in card_texts(card)]
    rows += [(prompt, BASE_LABEL) for prompt in off_topic]
    return rows


def off_topic_prompts() -> list[str]:
    """Prompts no adapter serves (general chat, knowledge, code...), shipped with Adaptrix."""
    path = Path(__file__).with_name("data") / "off_topic_prompts.txt"  # shipped as package data
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
