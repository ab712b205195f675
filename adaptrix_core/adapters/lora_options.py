"""Which PEFT LoRA options and saved tensors Adaptrix serves, and which it refuses (peft 0.21).

Every adapter shares one base model, so an adapter may only add LoRA A/B matrices beside the base
layers. Options that change, replace, copy or extend base modules (or that need a modified base,
such as PiSSA's residual weights) would change the model for every request; they are refused by
name before anything is loaded. Unknown keys (from other peft versions) are never passed to peft,
so they cannot change anything; they only produce a warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: Options whose non-empty value changes base modules or adds modules this engine does not serve,
#: with the reason shown to the user.
REFUSED_OPTIONS: Mapping[str, str] = {
    "layer_replication": "it replicates base layers in place, which changes the base model for every request",
    "modules_to_save": "it replaces whole base modules by trained copies",
    "trainable_token_indices": "it changes rows of the base model's token embedding",
    "target_parameters": "it puts LoRA on raw base parameters (e.g. MoE experts), which this engine does not serve",
    "use_dora": "DoRA magnitude vectors are not served (mixed batches and compositions would ignore them)",
    "lora_bias": "LoRA-B biases are not served (compositions would drop them)",
    "use_qalora": "QA-LoRA is for GPTQ-quantized base models",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not served",
    "arrow_config": "Arrow routing between adapters is not served",
    "use_bdlora": "block-diagonal LoRA is not served",
    "velora_config": "VeLoRA is not served",
    "monteclora_config": "MonteCLoRA is not served",
    "kasa_config": "KaSA truncates the base weights' singular values, which changes the base model",
    "megatron_config": "Megatron parallel layers are not served",
}

#: ``init_lora_weights`` values that are harmless: the saved LoRA weights replace whatever they set up.
SAFE_INITS = (True, False, "gaussian", "eva", "orthogonal")

#: Options that describe plain LoRA and are served as they are (values are checked where needed).
SERVED_OPTIONS = frozenset({
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out",
    "use_rslora", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
    "megatron_core", "runtime_config", "ensure_weight_tying", "qalora_group_size", "bias",
    # Settings of initialisations; they do nothing once ``init_lora_weights`` is a safe value.
    "loftq_config", "eva_config", "corda_config", "lora_ga_config",
})

_LORA_TENSOR = re.compile(r"^(?:base_model\.model\.)?.+\.lora_(?:A|B)\.weight$")


def _is_set(value: Any) -> bool:
    return value not in (None, False, "", [], {}, ())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def option_problems(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, warnings) for the LoRA options of an ``adapter_config.json`` dict."""
    problems: list[str] = []
    warnings: list[str] = []
    for option, reason in REFUSED_OPTIONS.items():
        value = config.get(option)
        if _is_set(value):
            problems.append(f"Option {option}={value!r} is refused: {reason}.")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        problems.append(f"Option bias={bias!r} is refused: it trains the base model's biases, which would change "
                        "them for every request; only bias='none' is served.")
    init = config.get("init_lora_weights", True)
    if not any(init is safe or (isinstance(safe, str) and init == safe) for safe in SAFE_INITS):
        problems.append(
            f"Option init_lora_weights={init!r} is refused: that initialisation changes the base weights (or is a "
            "LoRA variant this engine does not serve); convert the adapter to plain LoRA first (peft: "
            "save_pretrained(..., path_initial_model_for_weight_conversion=...))."
        )
    alpha = config.get("lora_alpha", 8)
    if not _is_number(alpha):
        problems.append(f"lora_alpha must be a finite number, got {alpha!r}.")
    dropout = config.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        problems.append(f"lora_dropout must be a number in [0, 1), got {dropout!r}.")
    for option, valid, what in (("rank_pattern", _is_rank, "positive integers"),
                                ("alpha_pattern", _is_number, "finite numbers")):
        pattern = config.get(option) or {}
        if not isinstance(pattern, Mapping) or not all(valid(v) for v in pattern.values()):
            problems.append(f"{option} must map module patterns to {what}, got {pattern!r}.")
    unknown = sorted(key for key, value in config.items()
                     if key not in SERVED_OPTIONS and key not in REFUSED_OPTIONS and key != "adaptrix" and _is_set(value))
    if unknown:
        warnings.append(f"Options unknown to this peft version are ignored: {', '.join(unknown)}.")
    return problems, warnings


def tensor_problems(names: Iterable[str]) -> list[str]:
    """Problems with the tensor names of an adapter's safetensors file: only LoRA A/B weights are loaded.

    Anything else (a base module's weight, ``modules_to_save`` copies, DoRA magnitudes, embedding LoRA,
    LoRA biases, trainable-token deltas) would overwrite or extend the shared base model.
    """
    others = sorted(name for name in names if not _LORA_TENSOR.match(name))
    if not others:
        return []
    shown = ", ".join(repr(name) for name in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    return [f"Its weights file holds {len(others)} tensor(s) that are not LoRA A/B weights ({shown}); loading them "
            "would change or extend the shared base model, so the adapter is refused."]
