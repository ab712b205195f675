"""The adapters loaded into one genai model: store names to genai names, their matrices, their files.

Store names map to internal genai names (``adx1``, ``adx2``, ...). Each adapter's converted file
lives in the cache (``<cache_dir>/onnx/adapters/<key>.onnx_adapter``), keyed by its weights' sha256
and the config fields that set its scale, so converting happens once per adapter version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptrix_core.errors import AdapterError
from adaptrix_plugins.backends.onnx import lora


class OnnxAdapters:
    """Adapters of one genai model (``og.Adapters``), with their matrices kept for mixing."""

    def __init__(self, og: Any, model: Any, cache: Path, slots: Sequence[str]):
        self.handle = og.Adapters(model)
        self.cache = cache
        self.slots = list(slots)
        self._internal: dict[str, str] = {}
        self._params: dict[str, dict[str, np.ndarray]] = {}
        self._keys: dict[str, str] = {}
        self._counter = 0

    def names(self) -> list[str]:
        return list(self._internal)

    def internal(self, name: str) -> str:
        """The genai name of loaded adapter ``name``."""
        try:
            return self._internal[name]
        except KeyError:
            raise AdapterError(f"Adapter {name!r} is not loaded in the model.") from None

    def total_bytes(self) -> int:
        return sum(self.bytes_of(name) for name in self._params)

    def bytes_of(self, name: str) -> int:
        return sum(int(array.nbytes) for array in self._params[name].values())

    def add(self, name: str, config: Mapping[str, Any], weights_file: Path) -> int:
        """Convert (or find the cached conversion of) a PEFT adapter and load it; return its bytes."""
        if name in self._internal:
            raise AdapterError(f"Adapter {name!r} is already loaded.")
        key = lora.conversion_key(config, weights_file)
        path = self.cache / f"{key}.onnx_adapter"
        params = lora.read_adapter_file(path)
        if params is None:
            params = lora.peft_to_params(name, config, weights_file)
            lora.check_slots(name, params, self.slots)
            lora.write_adapter_file(params, path)
        else:
            lora.check_slots(name, params, self.slots)
        return self._load(name, key, path, params)

    def compose(self, name: str, weights: Mapping[str, float]) -> int:
        """Load ``name`` as the weighted mix of loaded adapters (its file cached by parts and weights)."""
        if name in self._internal:
            raise AdapterError(f"Adapter {name!r} is already loaded.")
        for part in weights:
            self.internal(part)  # a clear error for a part that is not loaded
        parts = [(self._params[part], float(weight)) for part, weight in weights.items()]
        key = lora.mix_key([(self._keys[part], float(weight)) for part, weight in weights.items()])
        path = self.cache / f"{key}.onnx_adapter"
        params = lora.read_adapter_file(path)
        if params is None:
            params = lora.compose_params(parts)
            lora.write_adapter_file(params, path)
        return self._load(name, key, path, params)

    def _load(self, name: str, key: str, path: Path, params: dict[str, np.ndarray]) -> int:
        self._counter += 1
        internal = f"adx{self._counter}"
        try:
            self.handle.load(str(path), internal)
        except Exception as exc:  # genai raises plain RuntimeErrors
            raise AdapterError(f"onnxruntime-genai could not load adapter {name!r} from {str(path)!r}: {exc}") from exc
        self._internal[name], self._params[name], self._keys[name] = internal, params, key
        return self.bytes_of(name)

    def remove(self, name: str) -> None:
        """Unload adapter ``name`` from the model (its cached file stays for the next load)."""
        internal = self.internal(name)
        self.handle.unload(internal)
        del self._internal[name], self._params[name], self._keys[name]
