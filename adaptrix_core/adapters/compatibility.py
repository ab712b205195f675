"""Does an adapter's configuration fit the loaded model? Checked before any weights are touched.

Besides family, depth, targets and base model, the check refuses every PEFT option that would change
the shared base model (see ``lora_options``) and, when the weights file's tensor names are given,
any saved tensor that is not a LoRA A/B matrix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adaptrix_core.adapters.base_identity import (
    BaseIdentity,
    base_problems,
    normalise_model_name,
)
from adaptrix_core.adapters.lora_options import option_problems, tensor_problems
from adaptrix_core.errors import AdapterError
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.types import CompatibilityReport

__all__ = ["check_compatibility", "normalise_model_name", "read_adapter_config"]


def read_adapter_config(adapter_config: Any) -> dict[str, Any]:
    """Accept a dict, a PEFT config object, an adapter folder or an ``adapter_config.json`` path.

    A folder's ``adaptrix.json`` metadata (family, base_model, target_layers) is merged in under the
    key ``"adaptrix"``.
    """
    if isinstance(adapter_config, Mapping):
        return dict(adapter_config)
    if hasattr(adapter_config, "to_dict"):
        return dict(adapter_config.to_dict())
    if isinstance(adapter_config, (str, Path)):
        path = Path(adapter_config)
        folder = path if path.is_dir() else path.parent
        config_file = path if path.is_file() else path / "adapter_config.json"
        if not config_file.is_file():
            raise AdapterError(f"No adapter_config.json at {str(path)!r}.")
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
            meta_file = folder / "adaptrix.json"
            if meta_file.is_file():
                data["adaptrix"] = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterError(f"Adapter config at {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AdapterError(f"Adapter config at {str(path)!r} must be a JSON object.")
        return data
    raise AdapterError(f"Cannot read an adapter configuration from {type(adapter_config).__name__}.")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return list(value)
    return [value]


def _target_problems(targets: Any, family: ModelFamily, module_names: list[str],
                     linear_modules: list[str] | None) -> list[str]:
    """Every module the targets select (peft's rules) must be a projection of the family."""
    problems: list[str] = []
    leaves = {name.rsplit(".", 1)[-1] for name in module_names}
    if isinstance(targets, str):
        if targets == "all-linear":  # peft: every Linear except the output layer
            chosen = [n for n in (linear_modules or []) if "." in n]
        else:
            try:
                pattern = re.compile(targets)
            except re.error as exc:
                return [f"The target_modules pattern {targets!r} is not a valid regular expression: {exc}."]
            chosen = [name for name in module_names if pattern.fullmatch(name)]
            if module_names and not chosen:
                return [f"The target_modules pattern {targets!r} matches no module of this model."]
        others = sorted({n for n in chosen if n.rsplit(".", 1)[-1] not in family.projection_modules})
        if others:
            problems.append(
                f"The target_modules {targets!r} select {len(others)} module(s) that are not projections of the "
                f"{family.name} family, e.g. {others[0]!r} (known: {', '.join(family.projection_modules)})."
            )
        return problems
    for name in _as_list(targets):
        # peft matches a list entry as a module path or a dotted suffix of one ("all-linear" is saved
        # as full paths such as "model.layers.0.mlp.down_proj").
        dotted = isinstance(name, str) and "." in name
        if (name.rsplit(".", 1)[-1] if dotted else name) not in family.projection_modules:
            problems.append(
                f"Target module {name!r} is not a projection of the {family.name} family "
                f"(known: {', '.join(family.projection_modules)})."
            )
        elif dotted and module_names and not any(m == name or m.endswith("." + name) for m in module_names):
            problems.append(f"Target module {name!r} matches no module of this model.")
        elif not dotted and module_names and name not in leaves:
            problems.append(f"Target module {name!r} belongs to the {family.name} family but this model has none.")
    if not targets:
        problems.append("The adapter names no target modules.")
    return problems


def check_compatibility(
    adapter_config: Any,
    family: ModelFamily,
    num_layers: int,
    module_names: list[str],
    model_names: Iterable[str] | BaseIdentity,
    *,
    tensor_names: Iterable[str] | None = None,
    linear_modules: Iterable[str] | None = None,
) -> CompatibilityReport:
    """Compare an adapter configuration with the engine's family, depth, modules and base model.

    ``model_names`` is a ``BaseIdentity`` (ids, weight paths, fingerprint) or just the model's ids.
    ``tensor_names`` are the keys of the adapter's safetensors file, when known; ``linear_modules``
    the paths of the model's Linear layers (to resolve ``target_modules="all-linear"``).
    """
    config = read_adapter_config(adapter_config)
    meta = config.get("adaptrix") or {}
    identity = model_names if isinstance(model_names, BaseIdentity) else BaseIdentity.from_ids(model_names)
    problems: list[str] = []
    warnings: list[str] = []

    peft_type = config.get("peft_type", "LORA")
    peft_type = str(getattr(peft_type, "value", peft_type)).upper()  # PEFT configs hold an enum
    if peft_type != "LORA":
        problems.append(f"Adapter type {peft_type} is not supported; only LoRA adapters are.")

    option_issues, option_warnings = option_problems(config)
    problems.extend(option_issues)
    warnings.extend(option_warnings)
    targets = config.get("target_modules", meta.get("target_modules"))
    problems.extend(_target_problems(targets, family, module_names,
                                     list(linear_modules) if linear_modules is not None else None))

    layers = _as_list(config.get("layers_to_transform")) or _as_list(meta.get("target_layers"))
    bad_layers = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < num_layers]
    if bad_layers:
        problems.append(f"Layer indices {bad_layers} are out of range: this model has layers 0..{num_layers - 1}.")

    rank = config.get("r", meta.get("rank"))
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        problems.append(f"LoRA rank must be a positive integer, got {rank!r}.")

    adapter_family = meta.get("family")
    if adapter_family and adapter_family != family.name:
        problems.append(f"The adapter was made for the {adapter_family} family; this model is {family.name}.")

    base = meta.get("base_model") or config.get("base_model_name_or_path")
    base_issues, base_warnings = base_problems(base, meta.get("base_fingerprint"), identity)
    problems.extend(base_issues)
    warnings.extend(base_warnings)

    if tensor_names is not None:
        problems.extend(tensor_problems(tensor_names))

    return CompatibilityReport(
        compatible=not problems, problems=problems, warnings=warnings, family=family.name, num_layers=num_layers
    )
