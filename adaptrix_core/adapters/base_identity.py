"""Is an adapter's recorded base model the one this engine serves? By fingerprint, or by one of its ids.

A base model is identified first by what it is: the backend's fingerprint (architecture, sizes,
shapes of the LoRA-targetable layers and a hash over a few fixed weight tensors). Adapters made by
Adaptrix record it. Adapters made elsewhere only carry an id (``base_model_name_or_path``), which
is matched against every id the served model is known by: its hub id, the id it was loaded with,
its GGUF file name, and the folders or files its weights were read from. Ids that are paths are
compared as whole resolved paths, never by their last folder name (two folders called ``model``
hold different models); other ids compare by model name (``org/SmolLM2-135M-Instruct`` matches
``SmolLM2-135M-Instruct.Q4_1.gguf``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_QUANT_SUFFIX = re.compile(r"([.\-_](q\d\w*|f16|f32|bf16|fp16|gguf|instruct-gguf))+$", re.IGNORECASE)

#: Fingerprint keys that must be equal for two fingerprints to name the same base weights.
FINGERPRINT_KEYS = ("format", "architecture", "num_layers", "hidden_size", "vocab_size", "layer_shapes_sha256",
                    "weights_sha256")


def normalise_model_name(name: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct``, ``.../SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct``."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return _QUANT_SUFFIX.sub("", base).lower()


def is_path(model_id: str) -> bool:
    """True for ids that name a place on disk rather than a model: absolute, ``~``/``.``-relative,
    Windows-style, or with more than one ``/`` (a hub id is ``org/name``)."""
    text = model_id.strip()
    return (text.startswith(("/", "~", "./", "../", ".\\", "..\\")) or "\\" in text
            or bool(re.match(r"^[A-Za-z]:", text)) or text.count("/") >= 2)


def _resolved(path: str) -> str:
    try:
        return str(Path(os.path.expanduser(path.strip())).resolve())
    except (OSError, RuntimeError, ValueError):
        return path.strip()


@dataclass(frozen=True)
class BaseIdentity:
    """Everything the served base model is known by."""

    names: tuple[str, ...]
    paths: tuple[str, ...] = ()
    fingerprint: Mapping[str, Any] | None = None

    @classmethod
    def from_ids(cls, ids: Iterable[str], paths: Iterable[str] = (), fingerprint: Mapping[str, Any] | None = None
                 ) -> BaseIdentity:
        """Sort ``ids`` into names and paths (see ``is_path``); ``paths`` are added as paths."""
        ids = [str(i) for i in ids if i]
        return cls(names=tuple(i for i in ids if not is_path(i)),
                   paths=tuple(dict.fromkeys(_resolved(p) for p in [*paths, *(i for i in ids if is_path(i))] if p)),
                   fingerprint=fingerprint)

    def normalised_names(self) -> list[str]:
        return sorted({normalise_model_name(name) for name in self.names})

    def matches_id(self, recorded: str) -> bool:
        """True when ``recorded`` (an adapter's base id) is one of this model's ids."""
        if is_path(recorded):
            return _resolved(recorded) in self.paths
        return normalise_model_name(recorded) in self.normalised_names()


def same_fingerprint(recorded: Any, ours: Mapping[str, Any] | None) -> bool | None:
    """True/False when both fingerprints can be compared, None when either is missing or of another format."""
    if not isinstance(recorded, Mapping) or not ours or recorded.get("format") != ours.get("format"):
        return None
    return all(recorded.get(key) == ours.get(key) for key in FINGERPRINT_KEYS)


def base_problems(recorded_id: Any, recorded_fingerprint: Any, ours: BaseIdentity) -> tuple[list[str], list[str]]:
    """(problems, warnings): accepted when the fingerprint matches, else when the recorded id does."""
    fingerprint = same_fingerprint(recorded_fingerprint, ours.fingerprint)
    if fingerprint:
        return [], []
    if recorded_id and not isinstance(recorded_id, str):
        return [f"The adapter's base model must be recorded as a string, got {recorded_id!r}."], []
    if recorded_id and ours.matches_id(recorded_id):
        if fingerprint is False:
            return [], [f"The adapter names this base model ({recorded_id!r}) but its recorded base fingerprint "
                        "differs (other weights: another revision, quantisation or dtype); it is accepted by name."]
        return [], []
    serves = ours.normalised_names() + list(ours.paths)
    if recorded_id:
        also = " (its recorded base fingerprint differs too)" if fingerprint is False else ""
        return [f"The adapter was trained on base model {recorded_id!r}{also}; this engine serves {serves}."], []
    if fingerprint is False:
        return [f"The adapter was trained on another base model: its recorded base fingerprint differs from the "
                f"loaded model's ({serves})."], []
    return [], ["The adapter records no base model; it is only checked by family and shapes."]
