"""Which projections of which blocks get LoRA inputs in the built graph (the *slots*)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from adaptrix_core.adapters.metadata import WEIGHTS_FILE
from adaptrix_core.adapters.store import AdapterManager, lora_module_shapes, read_safetensors_header
from adaptrix_core.errors import AdapterError, ConfigError
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.models.layers import resolve_layers
from adaptrix_plugins.backends.onnx.settings import OnnxSettings

log = logging.getLogger(__name__)

_BLOCK_MODULE = re.compile(r".+\.layers\.(?P<index>\d+)\..+\.(?P<leaf>[^.]+)")


def block_projections(shapes: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, str]]:
    """Module path -> (block index, projection name) for every linear layer inside a transformer block."""
    found = {}
    for module in shapes:
        match = _BLOCK_MODULE.fullmatch(module)
        if match:
            found[module] = (int(match["index"]), match["leaf"])
    return found


def resolve_slots(settings: OnnxSettings, family: ModelFamily, num_layers: int,
                  shapes: Mapping[str, tuple[int, int]], store: str | Path | None) -> list[str]:
    """The slot modules, sorted: configured ones, or the family defaults plus what the store's adapters target."""
    projections = block_projections(shapes)
    present = sorted({leaf for _, leaf in projections.values()})
    if settings.explicit_slots:
        leaves = family.present_targets(list(shapes)) if settings.lora_modules is None else settings.lora_modules
        unknown = [leaf for leaf in leaves if leaf not in present]
        if unknown:
            raise ConfigError(f"plugins.onnx.lora_modules names {unknown}, which this model's blocks do not have "
                              f"(they have {', '.join(present)}).")
        try:
            layers = set(resolve_layers(settings.lora_layers or "middle", family, num_layers))
        except AdapterError as exc:
            raise ConfigError(f"plugins.onnx.lora_layers: {exc}") from None
        return sorted(m for m, (index, leaf) in projections.items() if leaf in leaves and index in layers)
    defaults = set(family.present_targets(list(shapes)))
    middle = set(family.middle_layers(num_layers))
    slots = {m for m, (index, leaf) in projections.items() if leaf in defaults and index in middle}
    slots |= store_targets(store, shapes)
    return sorted(slots)


def store_targets(store: str | Path | None, shapes: Mapping[str, tuple[int, int]]) -> set[str]:
    """Modules of this model (same shapes) that any readable adapter in the store targets."""
    if store is None:
        return set()
    manager = AdapterManager(store)
    targets: set[str] = set()
    for name in manager.names():
        try:
            adapter_shapes = lora_module_shapes(read_safetensors_header(manager.path(name) / WEIGHTS_FILE))
        except AdapterError as exc:  # a broken adapter adds no slots; loading it reports the problem
            log.debug("adapter %s adds no LoRA slots: %s", name, exc)
            continue
        targets |= {m for m, (fan_in, fan_out, _) in adapter_shapes.items() if shapes.get(m) == (fan_in, fan_out)}
    return targets
