"""Option types and cheap checks of the CLI, run before any model is loaded.

Numbers are range-checked by click (``Invalid value for '--top-p': ...``, exit status 2); names,
paths and prompts are checked here so that a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from adaptrix_core.generation.params import MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (which every range comparison lets through)."""

    name = "float"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
MAX_NEW_TOKENS_TYPE = click.IntRange(1, MAX_NEW_TOKENS)
SEED = click.IntRange(0, MAX_SEED)
TEMPERATURE = FiniteFloat(0, MAX_TEMPERATURE)
TOP_P = FiniteFloat(0, 1, min_open=True)
SHARE = FiniteFloat(0, 1, max_open=True)  # [0, 1): dropout, --eval-split
POSITIVE_FLOAT = FiniteFloat(0, min_open=True)
MIN_SCORE = FiniteFloat(-1, 1)


def check_folder_option(path: str | None, flag: str) -> None:
    """A folder flag may name a missing folder (it is created when needed) but not a file."""
    if path is not None and Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise click.BadParameter(f"{path!r} is a file, not a folder.", param_hint=f"'{flag}'")


def check_texts(texts: Iterable[str], what: str, prompt: bool = False) -> None:
    """Refuse text arguments that cannot be encoded (undecodable bytes on the command line)."""
    from adaptrix_core.errors import InvalidGenerationParameterError, InvalidPromptError
    from adaptrix_core.generation.params import check_text

    for text in texts:
        check_text(what, text, InvalidPromptError if prompt else InvalidGenerationParameterError)


def adapter_names(spec: Any) -> list[str]:
    """The adapter names a parsed ``--adapter`` value (or active list) refers to; none for auto or the base model."""
    if spec is None or spec == "auto":
        return []
    if isinstance(spec, str):
        return [spec]
    return list(spec)


def check_stored_adapters(directory: str, names: Iterable[str]) -> None:
    """Every name must be a valid adapter name with a folder in the store (AdapterError otherwise)."""
    from adaptrix_core.adapters.metadata import check_adapter_name
    from adaptrix_core.adapters.store import AdapterManager

    store = AdapterManager(directory)
    for name in names:
        check_adapter_name(name)
        store.metadata(name)


def check_router_name(name: str | None) -> None:
    """A router named on the command line must be registered by a plugin (ConfigError otherwise)."""
    if name is None:
        return
    from adaptrix_core.errors import ConfigError
    from adaptrix_core.registry import collect

    routers = collect().routers
    if name not in routers:
        raise ConfigError(f"--router {name!r} is not registered. Registered routers: {', '.join(sorted(routers)) or 'none'}.")
