"""``LoadedModel``: the facts about the one base model an engine serves, shared by its services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adaptrix_core.models.families import ModelFamily
    from adaptrix_core.models.source import ModelSource
    from adaptrix_core.protocols import BaseModelInterface
    from adaptrix_core.types import ModelDescription


@dataclass(frozen=True)
class LoadedModel:
    """A loaded backend with the model's description, detected family and where its files came from.

    The engine builds it in ``initialize()``; services receive a callable returning it (loading the
    model on first use), so none of them holds engine state it did not declare.
    """

    backend: BaseModelInterface
    family: ModelFamily
    description: ModelDescription
    source: ModelSource
    model_id: str

    def known_ids(self) -> tuple[str, ...]:
        """Every name this base model goes by: its canonical hub id, the id it was loaded as, its file."""
        return tuple(name for name in (self.source.canonical_id, self.model_id, self.source.gguf_file or "",
                                       str(self.source.path)) if name)
