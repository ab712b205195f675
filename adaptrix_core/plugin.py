"""Everything a plugin author needs, in one import: ``from adaptrix_core.plugin import ...``.

A plugin is a module with functions decorated by :data:`hookimpl` whose names match the hook
specifications in :mod:`adaptrix_core.hookspecs` (``register_model_families``,
``register_backends``, ``register_routers``, ``register_commands``), declared in the ``adaptrix``
entry-point group of its package. See ``docs/plugins.md`` for the steps. Importing this module is
cheap: it pulls in no torch, transformers, onnxruntime or faiss.
"""

from adaptrix_core.config import ModelSettings, RouterSettings
from adaptrix_core.errors import (
    AdapterError,
    AdaptrixError,
    BackendCapabilityError,
    ConfigError,
    ContextOverflowError,
    EngineClosedError,
    ModelLoadError,
    PluginError,
)
from adaptrix_core.hookspecs import hookimpl
from adaptrix_core.models.families import ChatQuirks, GenerationDefaults, ModelFamily
from adaptrix_core.models.source import ModelSource
from adaptrix_core.protocols import AdapterBackend, BaseModelInterface, Capability, Router, RoutingDecision
from adaptrix_core.routing.selection import AdapterCard, RouterResources, default_thresholds, select
from adaptrix_core.types import Completion, ModelDescription, SamplingParams

__all__ = [
    "AdapterBackend",
    "AdapterCard",
    "AdapterError",
    "AdaptrixError",
    "BackendCapabilityError",
    "BaseModelInterface",
    "Capability",
    "ChatQuirks",
    "Completion",
    "ConfigError",
    "ContextOverflowError",
    "EngineClosedError",
    "GenerationDefaults",
    "ModelDescription",
    "ModelFamily",
    "ModelLoadError",
    "ModelSettings",
    "ModelSource",
    "PluginError",
    "Router",
    "RouterResources",
    "RouterSettings",
    "RoutingDecision",
    "SamplingParams",
    "default_thresholds",
    "hookimpl",
    "select",
]
