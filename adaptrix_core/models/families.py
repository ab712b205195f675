"""Model families as data, and detection of a model's family.

A family says where a model keeps its transformer layers, what its projection modules are called,
which of them LoRA targets by default, which layers count as "middle", how its chat template must be
driven and which generation defaults suit it. Adding a family is one ``ModelFamily(...)`` value
registered by a plugin through ``register_model_families``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from adaptrix_core.errors import UnsupportedFamilyError


@dataclass(frozen=True)
class GenerationDefaults:
    """Generation settings a family's models are served with unless the caller overrides them."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    max_context: int = 4096


@dataclass(frozen=True)
class ChatQuirks:
    """How a family's chat template has to be driven.

    ``system_role``: False when the template rejects a system message (Gemma); the system text is
    then put in front of the first user message. ``thinking_switch``: the template takes an
    ``enable_thinking`` flag (Qwen3), passed from the engine's setting. ``end_of_turn_tokens``: tokens
    that end an assistant turn and so stop generation, besides the tokenizer's EOS.
    """

    system_role: bool = True
    thinking_switch: bool = False
    end_of_turn_tokens: tuple[str, ...] = ()


DEFAULT_TASK_PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "general": MappingProxyType({}),
        "code": MappingProxyType({"temperature": 0.3, "top_p": 0.95}),
        "math": MappingProxyType({"temperature": 0.1, "top_p": 0.9}),
        "creative": MappingProxyType({"temperature": 0.9, "top_p": 0.95}),
    }
)


@dataclass(frozen=True)
class ModelFamily:
    """Everything Adaptrix needs to know about one family of causal LMs.

    ``model_types`` and ``architectures`` are matched against the model's HF config;
    ``id_patterns`` (regular expressions, case-insensitive) against the model id when the config
    matches no family. ``layers_path`` is the dotted attribute path of the ``ModuleList`` of
    transformer blocks. ``attention_modules`` / ``mlp_modules`` are the projection names inside one
    block (fused names for fused models); ``default_target_modules`` are the LoRA targets used when
    the caller names none. ``middle_span`` is the default "middle" layer span as fractions of depth
    ``[start, end)``. ``task_presets`` maps ``task_type`` to generation overrides. A ``layers_path`` of
None asks the backend to find the block list itself (the generic fallback). A family that spans
variants with different module names (Phi and Phi-3) lists the names of all of them; only those
present in a given model are used.
    """

    name: str
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    id_patterns: tuple[str, ...] = ()
    layers_path: str | None = "model.layers"
    attention_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    mlp_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    default_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    middle_span: tuple[float, float] = (1 / 3, 2 / 3)
    chat: ChatQuirks = field(default_factory=ChatQuirks)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    task_presets: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: DEFAULT_TASK_PRESETS)
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", self.name):
            raise ValueError(f"Family name {self.name!r} must be lower-case letters, digits, '-' or '_'.")
        start, end = self.middle_span
        if not 0 <= start < end <= 1:
            raise ValueError(f"Family {self.name!r}: middle_span {self.middle_span} must satisfy 0 <= start < end <= 1.")
        missing = set(self.default_target_modules) - set(self.projection_modules)
        if missing:
            raise ValueError(f"Family {self.name!r}: default targets {sorted(missing)} are not among its projections.")

    @property
    def projection_modules(self) -> tuple[str, ...]:
        """All projection names a LoRA adapter may target in this family."""
        return self.attention_modules + self.mlp_modules

    def present_targets(self, module_names: Sequence[str], wanted: Sequence[str] | None = None) -> list[str]:
        """The names in ``wanted`` (default: ``default_target_modules``) that occur in ``module_names``."""
        leaves = {name.rsplit(".", 1)[-1] for name in module_names}
        return [name for name in (wanted or self.default_target_modules) if name in leaves]

    def middle_layers(self, num_layers: int) -> list[int]:
        """Indices of the default middle layers for a model with ``num_layers`` blocks (never empty)."""
        start = int(num_layers * self.middle_span[0])
        end = max(start + 1, round(num_layers * self.middle_span[1]))
        return list(range(start, min(end, num_layers)))

    def matches_config(self, model_type: str | None, architectures: Sequence[str]) -> bool:
        """True when the HF config's ``model_type`` or one of its ``architectures`` is this family's."""
        return (model_type in self.model_types) or any(a in self.architectures for a in architectures)

    def matches_id(self, model_id: str) -> bool:
        """True when the model id matches one of ``id_patterns``."""
        return any(re.search(pattern, model_id, re.IGNORECASE) for pattern in self.id_patterns)


GENERIC_FAMILY_NAME = "generic"


def detect_family(
    families: Mapping[str, ModelFamily],
    model_type: str | None,
    architectures: Sequence[str],
    model_id: str,
    forced: str | None = None,
) -> ModelFamily:
    """Pick the family for a model: forced name, then config match, then model-id match, then generic."""
    if forced:
        if forced not in families:
            raise UnsupportedFamilyError(
                f"Model family {forced!r} is not registered. Registered families: {', '.join(sorted(families))}."
            )
        return families[forced]
    candidates = [f for f in families.values() if f.name != GENERIC_FAMILY_NAME]
    for family in candidates:
        if family.matches_config(model_type, architectures):
            return family
    for family in candidates:
        if family.matches_id(model_id):
            return family
    if GENERIC_FAMILY_NAME in families:
        return families[GENERIC_FAMILY_NAME]
    raise UnsupportedFamilyError(
        f"No registered model family fits {model_id!r} (model_type={model_type!r}, "
        f"architectures={list(architectures)}), and the generic fallback family is not loaded. "
        "Check ADAPTRIX_LOAD_PLUGINS or install a plugin for this family."
    )
