"""The ``adapter`` argument of a request: parsing names and weighted mixes, and what was chosen."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adaptrix_core.adapters.metadata import check_adapter_name
from adaptrix_core.errors import InvalidGenerationParameterError

ACTIVE = object()  # the ``adapter`` argument was not given: use the active adapters

#: Largest absolute composition weight: beyond it a mix's update swamps the base model and sampling
#: can overflow (inf/NaN logits). Weights may be negative (subtracting an adapter's update).
MAX_ADAPTER_WEIGHT = 10.0


@dataclass(frozen=True)
class AdapterChoice:
    """What one request runs with: the model-level adapter name (None: base), the user's view, and
    the router's decision when ``adapter="auto"`` chose it."""

    target: str | None
    weights: dict[str, float]
    routing: dict[str, Any] | None = None


def composition_name(weights: Mapping[str, float]) -> str:
    """The model-level name of a weighted composition, e.g. ``mix(a=0.7,b=0.3)``."""
    return "mix(" + ",".join(f"{name}={weight:g}" for name, weight in sorted(weights.items())) + ")"


def parse_adapter_spec(spec: Any, active: Mapping[str, float]) -> dict[str, float]:
    """The ``adapter`` argument as ``{name: weight}`` (``ACTIVE``: the active set; None or {}: the base model)."""
    if spec is ACTIVE:
        return dict(active)
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {check_adapter_name(spec): 1.0}
    if isinstance(spec, (list, tuple)):
        return {check_adapter_name(name): 1.0 for name in spec}
    if isinstance(spec, Mapping):
        weights = {}
        for name, weight in spec.items():
            if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                    or abs(weight) > MAX_ADAPTER_WEIGHT):
                raise InvalidGenerationParameterError(
                    f"Adapter weight for {name!r} must be a finite number from -{MAX_ADAPTER_WEIGHT:g} to "
                    f"{MAX_ADAPTER_WEIGHT:g}, got {weight!r}."
                )
            weights[check_adapter_name(name)] = float(weight)
        if weights and not any(weights.values()):
            raise InvalidGenerationParameterError(
                f"Adapter weights {dict(spec)!r} are all zero: give at least one adapter a nonzero weight "
                "(or pass adapter=None for the base model)."
            )
        return weights
    raise InvalidGenerationParameterError(
        f"adapter must be a name, a list of names, a {{name: weight}} dict or None, got {type(spec).__name__}."
    )

