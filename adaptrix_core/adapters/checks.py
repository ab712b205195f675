"""``AdapterChecker``: does an adapter fit the served base model? Checked before any weights are touched.

The served model is identified by its backend's fingerprint and by every id it is known by (see
``base_identity``); an adapter fits when its recorded base is one of them and its options, tensors
and layer shapes fit the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from adaptrix_core.adapters.base_identity import BaseIdentity
from adaptrix_core.adapters.compatibility import check_compatibility
from adaptrix_core.adapters.metadata import WEIGHTS_FILE, AdapterMetadata
from adaptrix_core.adapters.store import (
    AdapterManager,
    lora_module_shapes,
    read_safetensors_header,
)
from adaptrix_core.errors import (
    AdapterIncompatibleError,
)
from adaptrix_core.models.loaded import LoadedModel
from adaptrix_core.protocols import AdapterBackend
from adaptrix_core.types import CompatibilityReport

#: Metadata fields ``import_adapter`` sets itself from the loaded model.
DERIVED_FIELDS = ("name", "base_model", "family", "base_fingerprint", "weights_sha256")


def _shape_problems(shapes: Mapping[str, tuple[int, int, int]], ours: Mapping[str, tuple[int, int]]) -> list[str]:
    """Layers the adapter has weights for that this model lacks or has in another shape (at most 5 named)."""
    problems = []
    for module, (fan_in, fan_out, _) in sorted(shapes.items()):
        if module not in ours:
            problems.append(f"It has weights for layer {module!r}, which this model does not have.")
        elif tuple(ours[module]) != (fan_in, fan_out):
            problems.append(f"Layer {module!r} is {ours[module][0]}->{ours[module][1]} here but {fan_in}->{fan_out} in the adapter.")
        if len(problems) >= 5:
            break
    return problems


class AdapterChecker:
    """Compatibility checks of adapter configs and weights against the loaded model (``model()``)."""

    def __init__(self, model: Callable[[], LoadedModel], store: AdapterManager):
        self._model = model
        self.store = store

    def base_identity(self) -> BaseIdentity:
        """The served model's ids (hub id, model id, GGUF file), weight paths and fingerprint."""
        loaded = self._model()
        source, backend = loaded.source, loaded.backend
        # The folder (also a GGUF file's folder: transformers records it as the model's path), the
        # GGUF file, and the converted safetensors folder the weights were read from.
        paths = [str(source.path), str(source.path / source.gguf_file) if source.gguf_file else "",
                 str(loaded.description.extra.get("weights_path") or "")]
        return BaseIdentity.from_ids(
            (source.canonical_id, loaded.model_id, source.gguf_file or ""), paths=paths,
            fingerprint=backend.fingerprint() if isinstance(backend, AdapterBackend) else None,
        )

    def report(self, adapter_config: Any, weights_file: Path | None = None) -> CompatibilityReport:
        """Check a config (dict, PEFT config, folder or adapter_config.json) against the loaded model.

        The tensors of ``weights_file`` (by default a given folder's ``adapter_model.safetensors``)
        are checked too: only LoRA A/B weights, for layers this model has, of the same shapes.
        """
        loaded = self._model()
        backend = loaded.backend
        if weights_file is None and isinstance(adapter_config, (str, os.PathLike)):
            candidate = Path(adapter_config)
            candidate = (candidate if candidate.is_dir() else candidate.parent) / WEIGHTS_FILE
            weights_file = candidate if candidate.is_file() else None
        tensor_names = shapes = None
        if weights_file is not None:
            header = read_safetensors_header(weights_file)
            tensor_names, shapes = list(header), lora_module_shapes(header)
        serves_lora = isinstance(backend, AdapterBackend)
        report = check_compatibility(adapter_config, loaded.family, loaded.description.num_layers, backend.module_names(),
                                     self.base_identity(), tensor_names=tensor_names,
                                     linear_modules=list(backend.lora_shapes()) if serves_lora else None)
        if shapes and serves_lora:
            extra = _shape_problems(shapes, backend.lora_shapes())
            if extra:
                report = report.model_copy(update={"compatible": False, "problems": [*report.problems, *extra]})
        return report

    def check_fits(self, name: str, meta: AdapterMetadata, config: Mapping[str, Any],
                   weights_file: Path | None = None) -> CompatibilityReport:
        """Raise ``AdapterIncompatibleError`` listing every reason the adapter does not fit the loaded model."""
        report = self.report({**config, "adaptrix": meta.model_dump()}, weights_file)
        if report.problems:
            raise AdapterIncompatibleError(name, report.problems)
        return report
