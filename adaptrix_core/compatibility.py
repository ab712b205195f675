"""Does an adapter's configuration fit the loaded model? Checked before any weights are touched."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from adaptrix_core.errors import AdapterError
from adaptrix_core.families import ModelFamily
from adaptrix_core.types import CompatibilityReport

_QUANT_SUFFIX = re.compile(r"([.\-_](q\d\w*|f16|f32|bf16|fp16|gguf|instruct-gguf))+$", re.IGNORECASE)


def normalise_model_name(name: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct``, ``.../SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct``."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return _QUANT_SUFFIX.sub("", base).lower()


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


def check_compatibility(
    adapter_config: Any,
    family: ModelFamily,
    num_layers: int,
    module_names: list[str],
    model_names: Iterable[str],
) -> CompatibilityReport:
    """Compare an adapter configuration with the engine's family, depth, modules and base model."""
    config = read_adapter_config(adapter_config)
    meta = config.get("adaptrix") or {}
    problems: list[str] = []
    warnings: list[str] = []

    peft_type = config.get("peft_type", "LORA")
    peft_type = str(getattr(peft_type, "value", peft_type)).upper()  # PEFT configs hold an enum
    if peft_type != "LORA":
        problems.append(f"Adapter type {peft_type} is not supported; only LoRA adapters are.")

    leaves = {name.rsplit(".", 1)[-1] for name in module_names}
    targets = config.get("target_modules", meta.get("target_modules"))
    if isinstance(targets, str):
        if module_names and not any(re.fullmatch(targets, name) for name in module_names):
            problems.append(f"The target_modules pattern {targets!r} matches no module of this model.")
    else:
        for name in _as_list(targets):
            if name not in family.projection_modules:
                problems.append(
                    f"Target module {name!r} is not a projection of the {family.name} family "
                    f"(known: {', '.join(family.projection_modules)})."
                )
            elif module_names and name not in leaves:
                problems.append(f"Target module {name!r} belongs to the {family.name} family but this model has none.")
        if not targets:
            problems.append("The adapter names no target modules.")

    layers = _as_list(config.get("layers_to_transform")) or _as_list(meta.get("target_layers"))
    bad_layers = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < num_layers]
    if bad_layers:
        problems.append(f"Layer indices {bad_layers} are out of range: this model has layers 0..{num_layers - 1}.")

    rank = config.get("r", meta.get("rank"))
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        problems.append(f"LoRA rank must be a positive integer, got {rank!r}.")

    adapter_family = meta.get("family")
    if adapter_family and adapter_family != family.name:
        problems.append(f"The adapter was made for the {adapter_family} family; this model is {family.name}.")

    base = meta.get("base_model") or config.get("base_model_name_or_path")
    ours = {normalise_model_name(name) for name in model_names if name}
    if base:
        if normalise_model_name(str(base)) not in ours:
            problems.append(f"The adapter was trained on base model {base!r}; this engine serves {sorted(ours)}.")
    else:
        warnings.append("The adapter records no base model; it is only checked by family and shapes.")

    return CompatibilityReport(
        compatible=not problems, problems=problems, warnings=warnings, family=family.name, num_layers=num_layers
    )
