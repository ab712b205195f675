"""Which transformer blocks and projections an adapter targets: presets, lists, family defaults."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptrix_core.errors import AdapterError
from adaptrix_core.models.families import ModelFamily

LAYER_PRESETS = ("middle", "quartiles", "all")


def resolve_layers(layers: Any, family: ModelFamily, num_layers: int) -> list[int]:
    """Turn ``"middle"``, ``"quartiles"``, ``"all"`` or an index list into sorted block indices.

    ``middle`` is the family's default middle span; ``quartiles`` the blocks at depth 1/4, 1/2 and
    3/4 (6, 12, 18 of 24); ``all`` every block.
    """
    if isinstance(layers, str):
        if layers == "middle":
            return family.middle_layers(num_layers)
        if layers == "quartiles":
            return sorted({min(num_layers - 1, num_layers * q // 4) for q in (1, 2, 3)})
        if layers == "all":
            return list(range(num_layers))
        raise AdapterError(f"Unknown layer preset {layers!r}; use {', '.join(LAYER_PRESETS)} or a list of indices.")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise AdapterError(f"layers must be a preset ({', '.join(LAYER_PRESETS)}) or a non-empty list of indices, got {layers!r}.")
    bad = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers]
    if bad:
        raise AdapterError(f"Layer indices {bad} are out of range: this model has layers 0..{num_layers - 1}.")
    return sorted(set(layers))


def resolve_targets(target_modules: Sequence[str] | None, family: ModelFamily, module_names: Sequence[str]) -> list[str]:
    """The family's default targets present in the model, or the caller's names checked against both."""
    if target_modules is None:
        targets = family.present_targets(module_names)
        if not targets:
            raise AdapterError(
                f"None of the {family.name} family's default LoRA targets "
                f"({', '.join(family.default_target_modules)}) exist in this model; name target_modules."
            )
        return targets
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    unknown = [name for name in target_modules if name not in family.projection_modules]
    if unknown:
        raise AdapterError(
            f"Target modules {unknown} are not projections of the {family.name} family "
            f"(known: {', '.join(family.projection_modules)})."
        )
    absent = [name for name in target_modules if name not in family.present_targets(module_names, target_modules)]
    if absent:
        raise AdapterError(f"Target modules {absent} belong to the {family.name} family but this model has none.")
    return list(dict.fromkeys(target_modules))
