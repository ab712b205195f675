"""Adaptrix: serve a small language model with many task-specific LoRA adapters.

Importing this package is cheap: torch, transformers and the plugins load on first use. The public
names below are resolved lazily (PEP 562); the ``TYPE_CHECKING`` block mirrors them for type
checkers and IDEs. Plugin authors import from :mod:`adaptrix_core.plugin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptrix_core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["AdaptrixConfig", "ModelFamily", "ModularAdaptrixEngine", "QueryResult", "hookimpl", "load_config"]

_LAZY = {
    "ModularAdaptrixEngine": "adaptrix_core.engine",
    "AdaptrixConfig": "adaptrix_core.config",
    "load_config": "adaptrix_core.config",
    "ModelFamily": "adaptrix_core.models.families",
    "QueryResult": "adaptrix_core.types",
}

if TYPE_CHECKING:
    from adaptrix_core.config import AdaptrixConfig, load_config
    from adaptrix_core.engine import ModularAdaptrixEngine
    from adaptrix_core.models.families import ModelFamily
    from adaptrix_core.types import QueryResult


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptrix_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
