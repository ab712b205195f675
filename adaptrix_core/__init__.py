"""Adaptrix: serve a small language model with many task-specific LoRA adapters.

Importing this package is cheap: torch, transformers and the plugins load on first use.
"""

from adaptrix_core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["AdaptrixConfig", "ModelFamily", "ModularAdaptrixEngine", "QueryResult", "hookimpl", "load_config"]


def __getattr__(name: str):
    if name == "ModularAdaptrixEngine":
        from adaptrix_core.engine import ModularAdaptrixEngine

        return ModularAdaptrixEngine
    if name in ("AdaptrixConfig", "load_config"):
        from adaptrix_core import config

        return getattr(config, name)
    if name == "ModelFamily":
        from adaptrix_core.families import ModelFamily

        return ModelFamily
    if name == "QueryResult":
        from adaptrix_core.types import QueryResult

        return QueryResult
    raise AttributeError(f"module 'adaptrix_core' has no attribute {name!r}")
