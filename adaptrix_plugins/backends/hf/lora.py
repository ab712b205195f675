"""LoRA adapters on one loaded transformers model, through peft (no hand-written hooks).

User-facing adapter names map to internal peft names (``adx1``, ``adx2``, ...), so any store name
is safe as a peft adapter key. Several adapters live side by side in the one base model; a request
picks none (base), one, or a per-row mix for a batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from safetensors.torch import load_file

from adaptrix_core.adapters.lora_options import option_problems, tensor_problems
from adaptrix_core.errors import (
    AdapterCorruptError,
    AdapterError,
    AdapterIncompatibleError,
    AdaptrixError,
)

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


def lora_config_from_dict(config: Mapping[str, Any], with_weights: bool = False) -> LoraConfig:
    """A peft LoraConfig from an ``adapter_config.json`` dict (unknown keys from other peft versions dropped).

    ``with_weights``: the LoRA weights come from a file, so they start as the harmless default (B = 0)
    whatever initialisation the adapter was trained with.
    """
    values = {k: v for k, v in config.items() if k in _LORA_FIELDS and k not in ("peft_type", "task_type")}
    values["task_type"] = "CAUSAL_LM"
    values["inference_mode"] = False
    if with_weights:
        values["init_lora_weights"] = True
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
        # What ``activated`` last switched peft to: ("base",) with the LoRA layers disabled, ("one", internal)
        # with one adapter set, or None (peft's normal state: layers enabled). Switching walks every module
        # (8 ms per decode step on the default model), so a run of steps with the same rows switches once.
        self._mode: tuple[str, ...] | None = None

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
        """Inject adapter ``name`` (fresh, or with weights from a safetensors file); return its bytes.

        Options and tensors that would change the base model are refused (``AdapterIncompatibleError``)
        before peft sees them. On any failure, also half-way through peft's injection, every trace of
        the adapter is removed again and the model is as it was.
        """
        self.settle()
        problems, _ = option_problems(config)
        if problems:
            raise AdapterIncompatibleError(name, problems)
        lora_config = lora_config_from_dict(config, with_weights=weights_file is not None)
        internal = self._new_internal(name)
        try:
            if self.peft is None:
                with _quiet_peft():  # peft notes that base_model_name_or_path now points at the local folder
                    self.peft = get_peft_model(self.base, lora_config, adapter_name=internal)
            else:
                self.peft.add_adapter(internal, lora_config)
            self._check_wrapped(name, internal)
            if weights_file is not None:
                self._load_weights(name, internal, weights_file)
        except BaseException as exc:
            self._forget(name, internal)
            if isinstance(exc, AdaptrixError) or not isinstance(exc, Exception):
                raise
            raise AdapterIncompatibleError(name, [f"peft could not add it to this model ({type(exc).__name__}: {exc})."]) from exc
        self.peft.eval()
        return self._measure(name)

    def _check_wrapped(self, name: str, internal: str) -> None:
        """LoRA may only sit on the Linear/Conv1D layers found at start-up (never embeddings or new modules)."""
        odd = [path for path, module in self.peft.base_model.model.named_modules()
               if isinstance(module, BaseTunerLayer) and internal in _adapters_of(module)
               and (path not in self.shapes or internal not in getattr(module, "lora_A", {}))]
        if odd:
            raise AdapterIncompatibleError(name, [f"It puts adapter layers on {len(odd)} module(s) that are not "
                                                  f"Linear layers of the base model, e.g. {odd[0]!r}."])

    def _load_weights(self, name: str, internal: str, weights_file: Path) -> None:
        try:
            state = load_file(str(weights_file), device=str(self.device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterCorruptError(f"Adapter {name!r}: {weights_file.name} cannot be read as safetensors: {exc}") from None
        problems = tensor_problems(state)
        if problems:
            raise AdapterIncompatibleError(name, problems)

        def plain(key: str) -> str:
            return key.removeprefix("base_model.model.")

        expected = {plain(key) for key in get_peft_model_state_dict(self.peft, adapter_name=internal, save_embedding_layers=False)}
        found = {plain(key) for key in state}
        extra, missing = sorted(found - expected), sorted(expected - found)
        if extra or missing:
            what = (f"{len(extra)} weight tensor(s) match no LoRA layer its config creates, e.g. {extra[0]!r}" if extra
                    else f"{len(missing)} LoRA weight tensor(s) its config creates are missing, e.g. {missing[0]!r}")
            raise AdapterIncompatibleError(name, [f"Its weights do not match its configuration: {what}."])
        bad = sorted(key for key, tensor in state.items() if not tensor.is_floating_point() or not torch.isfinite(tensor).all())
        if bad:
            raise AdapterIncompatibleError(name, [f"{len(bad)} weight tensor(s) hold non-finite or non-float values, e.g. {bad[0]!r}."])
        try:
            set_peft_model_state_dict(self.peft, state, adapter_name=internal)
        except RuntimeError as exc:  # size mismatch
            raise AdapterIncompatibleError(name, [f"Its weights do not fit this model's layers: {exc}"]) from None

    def remove(self, name: str) -> None:
        """Take adapter ``name`` out of the model; the last one removed restores the plain model."""
        self.settle()
        self._forget(name, self.internal(name))

    def _forget(self, name: str, internal: str) -> None:
        """Remove every trace of ``internal`` (also a half-done injection); restore the plain model when none is left."""
        self._internal.pop(name, None)
        self._bytes.pop(name, None)
        with _quiet_peft():
            if self.peft is not None and internal in self.peft.peft_config:
                if not self._internal:
                    self._unwrap()
                    return
                self.peft.delete_adapter(internal)
            for _path, module in list(self.base.named_modules()):
                if isinstance(module, BaseTunerLayer) and internal in _adapters_of(module):
                    module.delete_adapter(internal)
            if not self._internal:
                self._unwrap()
            else:
                self._drop_empty_wrappers()

    def _unwrap(self) -> None:
        """Put every original layer back in place of its LoRA wrapper (nothing is merged)."""
        if self.peft is not None:
            self.base = self.peft.unload()
            self.peft = None
        self._drop_empty_wrappers(every=True)
        if hasattr(self.base, "peft_config"):
            del self.base.peft_config

    def _drop_empty_wrappers(self, every: bool = False) -> None:
        for path, module in list(self.base.named_modules()):
            if isinstance(module, BaseTunerLayer) and (every or not _adapters_of(module)):
                parent_path, _, child = path.rpartition(".")
                parent = self.base.get_submodule(parent_path) if parent_path else self.base
                setattr(parent, child, module.get_base_layer())

    def compose(self, name: str, weights: Mapping[str, float]) -> int:
        """A new adapter ``name`` whose update is the weighted sum of the given adapters' updates."""
        self.settle()
        parts = [self.internal(part) for part in weights]
        internal = self._new_internal(name)
        try:
            with _quiet_peft():
                self.peft.add_weighted_adapter(parts, list(weights.values()), adapter_name=internal, combination_type="cat")
            # "cat" puts each part's scaling into its A rows and gives the sum r = alpha; peft still
            # applies the first part's rsLoRA rule (alpha / sqrt(r)) to it, so set the intended 1.
            for module in self.peft.modules():
                if isinstance(module, BaseTunerLayer) and internal in getattr(module, "scaling", {}):
                    module.scaling[internal] = 1.0
            self.peft.peft_config[internal].use_rslora = False
        except BaseException as exc:
            self._forget(name, internal)
            if isinstance(exc, (ValueError, TypeError)):
                raise AdapterError(f"Adapters {', '.join(weights)} cannot be composed: {exc}") from None
            raise
        self.peft.eval()  # new dropout modules start in training mode
        return self._measure(name)

    def save(self, name: str, folder: Path, base_model: str) -> Path:
        """Write adapter ``name`` as a standard PEFT folder (safetensors) under ``folder``; return it."""
        self.settle()
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
    def settle(self) -> None:
        """Put peft back in its normal state (adapter layers enabled) before anything but ``activated`` uses it."""
        if self._mode == ("base",) and self.peft is not None:
            self.peft.base_model.enable_adapter_layers()
        self._mode = None

    @contextlib.contextmanager
    def activated(self, adapters: Sequence[str | None] | None) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Yield (model to call generate on, extra generate kwargs) for one row's adapter each.

        The switch is left in place afterwards (see ``_mode``): callers that use peft otherwise call
        ``settle`` first.
        """
        wanted = list(adapters or [])
        if self.peft is None:
            self._mode = None
            yield self.base, {}
            return
        if not any(wanted):
            if self._mode != ("base",):
                self.settle()
                self.peft.base_model.disable_adapter_layers()
                self._mode = ("base",)
            yield self.peft, {}
            return
        distinct = set(wanted)
        if len(distinct) == 1:
            internal = self.internal(wanted[0])
            if self._mode != ("one", internal):
                self.settle()
                self.peft.set_adapter(internal)
                self._mode = ("one", internal)
            yield self.peft, {}
            return
        self.settle()
        yield self.peft, {"adapter_names": [BASE if a is None else self.internal(a) for a in wanted]}


def _adapters_of(layer: BaseTunerLayer) -> set[str]:
    """Names of the adapters a peft layer holds anything for."""
    names: set[str] = set()
    for attribute in layer.adapter_layer_names + layer.other_param_names:
        container = getattr(layer, attribute, None)
        if isinstance(container, (dict, torch.nn.ModuleDict, torch.nn.ParameterDict)):
            names.update(container.keys())
    return names


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
