"""Checking adapters against the served base model, and importing adapters made elsewhere.

Mixed into the engine through ``AdapterServingMixin``. The served model is identified by its
backend's fingerprint and by every id it is known by (see ``base_identity``); an adapter fits when
its recorded base is one of them and its options, tensors and layer shapes fit the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from adaptrix_core.adapter_meta import WEIGHTS_FILE, AdapterMetadata, check_adapter_name
from adaptrix_core.adapter_store import (
    check_peft_folder,
    lora_module_shapes,
    read_safetensors_header,
)
from adaptrix_core.base_identity import BaseIdentity
from adaptrix_core.compatibility import check_compatibility
from adaptrix_core.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterIncompatibleError,
)
from adaptrix_core.protocols import AdapterBackend
from adaptrix_core.types import CompatibilityReport

#: Metadata fields ``import_adapter`` sets itself from the loaded model.
_DERIVED_FIELDS = ("name", "base_model", "family", "base_fingerprint", "weights_sha256")


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


class AdapterChecksMixin:
    """Compatibility checks and ``import_adapter`` (see ``ModularAdaptrixEngine``)."""

    def _base_identity(self) -> BaseIdentity:
        """The served model's ids (hub id, model id, GGUF file), weight paths and fingerprint."""
        source, backend = self._source, self._backend
        # The folder (also a GGUF file's folder: transformers records it as the model's path), the
        # GGUF file, and the converted safetensors folder the weights were read from.
        paths = [str(source.path), str(source.path / source.gguf_file) if source.gguf_file else "",
                 str(self._description.extra.get("weights_path") or "")]
        return BaseIdentity.from_ids(
            (source.canonical_id, self.model_id, source.gguf_file or ""), paths=paths,
            fingerprint=backend.fingerprint() if isinstance(backend, AdapterBackend) else None,
        )

    def _adapter_report(self, adapter_config: Any, weights_file: Path | None = None) -> CompatibilityReport:
        """Check a config (dict, PEFT config, folder or adapter_config.json) against the loaded model.

        The tensors of ``weights_file`` (by default a given folder's ``adapter_model.safetensors``)
        are checked too: only LoRA A/B weights, for layers this model has, of the same shapes.
        """
        backend = self._ready()
        if weights_file is None and isinstance(adapter_config, (str, os.PathLike)):
            candidate = Path(adapter_config)
            candidate = (candidate if candidate.is_dir() else candidate.parent) / WEIGHTS_FILE
            weights_file = candidate if candidate.is_file() else None
        tensor_names = shapes = None
        if weights_file is not None:
            header = read_safetensors_header(weights_file)
            tensor_names, shapes = list(header), lora_module_shapes(header)
        serves_lora = isinstance(backend, AdapterBackend)
        report = check_compatibility(adapter_config, self._family, self._description.num_layers, backend.module_names(),
                                     self._base_identity(), tensor_names=tensor_names,
                                     linear_modules=list(backend.lora_shapes()) if serves_lora else None)
        if shapes and serves_lora:
            extra = _shape_problems(shapes, backend.lora_shapes())
            if extra:
                report = report.model_copy(update={"compatible": False, "problems": [*report.problems, *extra]})
        return report

    def _check_fits(self, name: str, meta: AdapterMetadata, config: Mapping[str, Any],
                    weights_file: Path | None = None) -> CompatibilityReport:
        """Raise ``AdapterIncompatibleError`` listing every reason the adapter does not fit the loaded model."""
        self._adapter_backend()
        report = self._adapter_report({**config, "adaptrix": meta.model_dump()}, weights_file)
        if report.problems:
            raise AdapterIncompatibleError(name, report.problems)
        return report

    def import_adapter(self, path: str | os.PathLike, name: str, base_model: str | None = None,
                       overwrite: bool = False, **metadata: Any) -> AdapterMetadata:
        """Check a PEFT LoRA folder made elsewhere against the loaded model, then add it to the store.

        ``base_model`` is the model it was trained on, when its ``adapter_config.json`` does not say
        so usefully (a path on another machine, a private name): it is recorded as the adapter's
        ``base_model`` and checked like any recorded id. ``metadata`` sets fields such as
        ``description`` or ``routing``. The stored metadata also records this model's family and
        fingerprint, so the adapter later loads wherever these weights are served.

        Raises ``AdapterNotFoundError`` / ``AdapterCorruptError`` (files), ``AdapterExistsError``
        (name taken and ``overwrite`` False) or ``AdapterIncompatibleError``; nothing is written then.
        """
        check_adapter_name(name)
        folder = Path(path).expanduser()
        config, _ = check_peft_folder(folder)
        if base_model is not None and (not isinstance(base_model, str) or not base_model.strip()):
            raise AdapterError(f"base_model must be a non-empty model id or path, got {base_model!r}.")
        extra = {key: value for key, value in metadata.items() if key not in _DERIVED_FIELDS}
        with self._lock:
            if self.adapter_manager.path(name).exists() and not overwrite:
                raise AdapterExistsError(f"Adapter {name!r} already exists in the store; pass overwrite=True to replace it.")
            entry = self._loaded.get(name)
            if entry is not None and entry.kind == "memory":
                raise AdapterExistsError(f"An unsaved adapter named {name!r} is loaded; save or unload it first.")
            backend = self._adapter_backend()
            try:
                meta = AdapterMetadata.from_peft_config(name, config, base_model=base_model and base_model.strip(), **extra)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise AdapterError(f"Invalid metadata for adapter {name!r}: {'.'.join(map(str, first['loc']))}: "
                                   f"{first['msg']}.") from None
            self._check_fits(name, meta, config, folder / WEIGHTS_FILE)
            saved = self.adapter_manager.import_peft(folder, name, overwrite=overwrite, **{
                **extra, "base_model": meta.base_model, "family": self._family.name,
                "base_fingerprint": backend.fingerprint(),
            })
            if name in self._loaded:  # the old version is in the model: the next use loads the new one
                self._drop(name)
            return saved
