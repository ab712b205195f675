"""LoRA adapters on one loaded transformers model, through peft (no hand-written hooks).

User-facing adapter names map to internal peft names (``adx1``, ``adx2``, ...), so any store name
is safe as a peft adapter key. Several adapters live side by side in the one base model; a request
picks none (base), one, or a per-row mix for a batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from adaptrix_core.errors import AdapterError, AdapterIncompatibleError

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
_LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)}


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Module path to (in_features, out_features) for every Linear and GPT-2 Conv1D layer."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
            shapes[name] = tuple(module.weight.shape)  # Conv1D stores (in, out)
    return shapes


def lora_config_from_dict(config: Mapping[str, Any]) -> LoraConfig:
    """A peft LoraConfig from an ``adapter_config.json`` dict (unknown keys from other peft versions dropped)."""
    values = {k: v for k, v in config.items() if k in _LORA_FIELDS and k not in ("peft_type", "task_type")}
    values["task_type"] = "CAUSAL_LM"
    values["inference_mode"] = False
    try:
        return LoraConfig(**values)
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"The LoRA configuration is invalid: {exc}") from None


class PeftAdapters:
    """The adapters loaded into one model, with their memory use."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.base = model
        self.device = device
        self.peft: PeftModel | None = None
        self.shapes = linear_shapes(model)
        self._internal: dict[str, str] = {}
        self._bytes: dict[str, int] = {}
        self._counter = 0

    # -- bookkeeping -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._internal)

    def bytes_of(self, name: str) -> int:
        return self._bytes[name]

    def internal(self, name: str) -> str:
        try:
            return self._internal[name]
        except KeyError:
            raise AdapterError(f"Adapter {name!r} is not loaded in the model.") from None

    def _new_internal(self, name: str) -> str:
        if name in self._internal:
            raise AdapterError(f"Adapter {name!r} is already loaded.")
        self._counter += 1
        internal = f"adx{self._counter}"
        self._internal[name] = internal
        return internal

    def _measure(self, name: str) -> int:
        marker = f".{self._internal[name]}."
        total = sum(p.numel() * p.element_size() for n, p in self.peft.named_parameters() if marker in f"{n}.")
        self._bytes[name] = total
        return total

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The LoRA parameters of adapter ``name`` (for training)."""
        marker = f".{self.internal(name)}."
        return [p for n, p in self.peft.named_parameters() if marker in f"{n}." and "lora_" in n]

    # -- adding and removing ---------------------------------------------------------------------
    def add(self, name: str, config: Mapping[str, Any], weights_file: Path | None = None) -> int:
        """Inject adapter ``name`` (fresh, or with weights from a safetensors file); return its bytes."""
        lora_config = lora_config_from_dict(config)
        internal = self._new_internal(name)
        try:
            if self.peft is None:
                with _quiet_peft():  # peft notes that base_model_name_or_path now points at the local folder
                    self.peft = get_peft_model(self.base, lora_config, adapter_name=internal)
            else:
                self.peft.add_adapter(internal, lora_config)
            if weights_file is not None:
                self._load_weights(name, internal, weights_file)
        except BaseException:
            self._forget(name)
            raise
        self.peft.eval()
        return self._measure(name)

    def _load_weights(self, name: str, internal: str, weights_file: Path) -> None:
        state = load_file(str(weights_file), device=str(self.device))
        try:
            result = set_peft_model_state_dict(self.peft, state, adapter_name=internal)
        except RuntimeError as exc:  # size mismatch
            raise AdapterIncompatibleError(name, [f"Its weights do not fit this model's layers: {exc}"]) from None
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise AdapterIncompatibleError(name, [f"{len(unexpected)} weight tensors match no LoRA layer, e.g. {unexpected[0]!r}."])

    def remove(self, name: str) -> None:
        """Take adapter ``name`` out of the model; the last one removed restores the plain model."""
        self.internal(name)
        self._forget(name)

    def _forget(self, name: str) -> None:
        internal = self._internal.pop(name, None)
        self._bytes.pop(name, None)
        if self.peft is None or internal is None or internal not in self.peft.peft_config:
            return
        if not self._internal:
            self.base = self.peft.unload()
            self.peft = None
            return
        with _quiet_peft():
            self.peft.delete_adapter(internal)

    def compose(self, name: str, weights: Mapping[str, float]) -> int:
        """A new adapter ``name`` whose update is the weighted sum of the given adapters' updates."""
        parts = [self.internal(part) for part in weights]
        internal = self._new_internal(name)
        try:
            with _quiet_peft():
                self.peft.add_weighted_adapter(parts, list(weights.values()), adapter_name=internal, combination_type="cat")
        except (ValueError, TypeError) as exc:
            self._forget(name)
            raise AdapterError(f"Adapters {', '.join(weights)} cannot be composed: {exc}") from None
        self.peft.eval()  # new dropout modules start in training mode
        return self._measure(name)

    def save(self, name: str, folder: Path, base_model: str) -> Path:
        """Write adapter ``name`` as a standard PEFT folder (safetensors) under ``folder``; return it."""
        internal = self.internal(name)
        with _quiet_peft():  # peft cannot find the base config when the model came from a converted folder
            self.peft.save_pretrained(str(folder), selected_adapters=[internal], safe_serialization=True)
        written = folder / internal if (folder / internal).is_dir() else folder
        config_file = written / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = base_model
        config["inference_mode"] = True
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return written

    # -- generation ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def activated(self, adapters: Sequence[str | None] | None) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Yield (model to call generate on, extra generate kwargs) for one row's adapter each."""
        wanted = list(adapters or [])
        if self.peft is None or not any(wanted):
            if self.peft is None:
                yield self.base, {}
            else:
                with self.peft.disable_adapter():
                    yield self.peft, {}
            return
        distinct = set(wanted)
        if len(distinct) == 1:
            self.peft.set_adapter(self.internal(wanted[0]))
            yield self.peft, {}
            return
        yield self.peft, {"adapter_names": [BASE if a is None else self.internal(a) for a in wanted]}


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
