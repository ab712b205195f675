"""Serving many LoRA adapters from one loaded base model: store, LRU cache, switching, composition.

Mixed into ``ModularAdaptrixEngine``; every public method takes the engine lock, so concurrent
requests never see each other's adapter.
"""

from __future__ import annotations

import math
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from adaptrix_core.adapter_meta import WEIGHTS_FILE, AdapterMetadata, check_adapter_name
from adaptrix_core.adapter_store import AdapterManager
from adaptrix_core.capabilities import require_capability
from adaptrix_core.compatibility import check_compatibility
from adaptrix_core.errors import (
    AdapterError,
    AdapterIncompatibleError,
    AdapterNotFoundError,
    InvalidGenerationParameterError,
)
from adaptrix_core.layers import resolve_layers, resolve_targets
from adaptrix_core.protocols import AdapterBackend, Capability

ACTIVE = object()  # the ``adapter`` argument was not given: use the active adapters


@dataclass
class LoadedAdapter:
    """An adapter present in the model: from the store, made in memory (unsaved) or composed."""

    name: str
    kind: str  # "stored", "memory" or "composed"
    bytes: int
    metadata: AdapterMetadata | None = None
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterChoice:
    """What one request runs with: the model-level adapter name (None: base), the user's view, and
    the router's decision when ``adapter="auto"`` chose it."""

    target: str | None
    weights: dict[str, float]
    routing: dict[str, Any] | None = None


def composition_name(weights: Mapping[str, float]) -> str:
    return "mix(" + ",".join(f"{name}={weight:g}" for name, weight in sorted(weights.items())) + ")"


class AdapterServingMixin:
    """Adapter methods of the engine (see ``ModularAdaptrixEngine``)."""

    _loaded: "OrderedDict[str, LoadedAdapter]"
    _active: dict[str, float]

    def _init_adapters(self) -> None:
        self._loaded = OrderedDict()
        self._active = {}
        self.adapter_manager = AdapterManager(self.config.adapters.directory)

    # -- store-level -------------------------------------------------------------------------------
    def list_adapters(self) -> list[dict[str, Any]]:
        """Every adapter in the store and in memory: name, loaded, active, description, metrics, problem."""
        with self._lock:
            rows = {}
            for listing in self.adapter_manager.list():
                meta = listing.metadata
                rows[listing.name] = {
                    "name": listing.name, "loaded": listing.name in self._loaded, "active": listing.name in self._active,
                    "saved": True, "description": meta.description if meta else "",
                    "target_layers": meta.target_layers if meta else None, "rank": meta.rank if meta else None,
                    "performance_metrics": meta.performance_metrics if meta else {}, "problem": listing.problem,
                }
            for name, entry in self._loaded.items():
                if entry.kind == "memory":
                    rows[name] = {"name": name, "loaded": True, "active": name in self._active, "saved": False,
                                  "description": entry.metadata.description, "target_layers": entry.metadata.target_layers,
                                  "rank": entry.metadata.rank, "performance_metrics": {}, "problem": None}
            return [rows[name] for name in sorted(rows)]

    def active_adapters(self) -> list[str]:
        """Adapters used by requests that name none (set by ``switch_adapter``)."""
        return list(self._active)

    def loaded_adapters(self) -> list[str]:
        """Adapters currently in the model, least recently used first (compositions excluded)."""
        return [name for name, entry in self._loaded.items() if entry.kind != "composed"]

    # -- loading ------------------------------------------------------------------------------------
    def load_adapter(self, name: str) -> AdapterMetadata:
        """Validate adapter ``name`` from the store and put it in the model (no base-model reload).

        Raises ``AdapterNotFoundError``, ``AdapterCorruptError``, ``AdapterIntegrityError`` or
        ``AdapterIncompatibleError``; the model and the other adapters are untouched when it does.
        """
        with self._lock:
            entry = self._ensure_loaded(check_adapter_name(name), pinned=(name,))
            return entry.metadata

    def preload(self, names: Sequence[str]) -> list[str]:
        """Load several adapters (the last ``cache_size`` of them stay loaded); return the loaded list."""
        with self._lock:
            for name in names:
                self._ensure_loaded(check_adapter_name(name), pinned=(name,))
            return self.loaded_adapters()

    def unload_adapter(self, name: str) -> None:
        """Take adapter ``name`` out of the model (an unsaved one is lost); it stays in the store."""
        with self._lock:
            if name not in self._loaded:
                raise AdapterNotFoundError(f"Adapter {name!r} is not loaded (loaded: {', '.join(self.loaded_adapters()) or 'none'}).")
            self._drop(name)
            self._active.pop(name, None)

    def switch_adapter(self, name_or_old: str | None, new: str | None = None) -> list[str]:
        """Make ``name`` the active adapter, or replace active ``old`` by ``new``; return the active list.

        ``switch_adapter(None)`` deactivates every adapter (requests then use the base model).
        """
        with self._lock:
            if new is None:
                if name_or_old is None:
                    self._active = {}
                else:
                    self._ensure_loaded(check_adapter_name(name_or_old), pinned=(name_or_old,))
                    self._active = {name_or_old: 1.0}
                return self.active_adapters()
            old = name_or_old
            if old not in self._active:
                raise AdapterError(f"Adapter {old!r} is not active (active: {', '.join(self._active) or 'none'}).")
            self._ensure_loaded(check_adapter_name(new), pinned=(new,))
            self._active = {(new if key == old else key): weight for key, weight in self._active.items()}
            return self.active_adapters()

    def memory_report(self) -> dict[str, Any]:
        """Bytes taken by each loaded adapter and by the base model's weights."""
        with self._lock:
            self._ready()
            info = self._description
            adapters = {name: entry.bytes for name, entry in self._loaded.items()}
            bytes_per_parameter = {"float32": 4, "float16": 2, "bfloat16": 2}.get(info.dtype, 4)
            weights = self._backend.memory_report().get("weights")  # a quantized backend knows its real size
            return {
                "adapters": adapters,
                "total_adapter_bytes": sum(adapters.values()),
                "base_model_bytes": weights if weights else (info.num_parameters or 0) * bytes_per_parameter,
                "cache_size": self.config.adapters.cache_size,
                "loaded": self.loaded_adapters(),
                "active": self.active_adapters(),
            }

    def _adapter_backend(self) -> AdapterBackend:
        backend = self._ready()
        if not isinstance(backend, AdapterBackend):
            raise AdapterError(f"The {backend.name!r} backend does not serve LoRA adapters; use backend='hf'.")
        return backend

    def _ensure_loaded(self, name: str, pinned: Sequence[str]) -> LoadedAdapter:
        backend = self._adapter_backend()
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        meta, config, shapes = self.adapter_manager.validate(name)
        self._check_fits(name, meta, config, shapes)
        size = backend.inject_lora(name, config, self.adapter_manager.path(name) / WEIGHTS_FILE)
        entry = LoadedAdapter(name, "stored", size, meta)
        self._loaded[name] = entry
        self._evict(keep=pinned)
        return entry

    def _check_fits(self, name: str, meta: AdapterMetadata, config: dict[str, Any], shapes: dict) -> None:
        backend = self._backend
        report = check_compatibility({**config, "adaptrix": meta.model_dump()}, self._family,
                                     self._description.num_layers, backend.module_names(), self._model_names())
        problems = list(report.problems)
        ours = backend.lora_shapes()
        for module, (fan_in, fan_out, _) in sorted(shapes.items()):
            if module not in ours:
                problems.append(f"It has weights for layer {module!r}, which this model does not have.")
            elif ours[module] != (fan_in, fan_out):
                problems.append(f"Layer {module!r} is {ours[module][0]}->{ours[module][1]} here but {fan_in}->{fan_out} in the adapter.")
            if len(problems) > 5:
                break
        if problems:
            raise AdapterIncompatibleError(name, problems)

    def _model_names(self) -> tuple[str, ...]:
        return (self._source.canonical_id, self.model_id, self._source.gguf_file or "")

    def _drop(self, name: str) -> None:
        for other, entry in list(self._loaded.items()):
            if entry.kind == "composed" and name in entry.parts:
                self._backend.remove_lora(other)
                del self._loaded[other]
        self._backend.remove_lora(name)
        del self._loaded[name]

    def _evict(self, keep: Sequence[str]) -> None:
        """Unload least recently used adapters beyond ``cache_size`` (never unsaved or ``keep`` ones)."""
        limit = self.config.adapters.cache_size
        protected = set(keep)
        for entry in list(self._loaded.values()):
            if entry.kind == "composed":
                protected.update(entry.parts if entry.name in protected else ())
        while True:
            evictable = [n for n, e in self._loaded.items() if e.kind != "memory" and n not in protected]
            if len(self._loaded) <= limit or not evictable:
                return
            self._drop(evictable[0])

    # -- per-request choice -------------------------------------------------------------------------
    def _parse_adapter(self, spec: Any) -> dict[str, float]:
        if spec is ACTIVE:
            return dict(self._active)
        if spec is None:
            return {}
        if isinstance(spec, str):
            return {check_adapter_name(spec): 1.0}
        if isinstance(spec, (list, tuple)):
            return {check_adapter_name(name): 1.0 for name in spec}
        if isinstance(spec, Mapping):
            weights = {}
            for name, weight in spec.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                    raise InvalidGenerationParameterError(f"Adapter weight for {name!r} must be a finite number, got {weight!r}.")
                weights[check_adapter_name(name)] = float(weight)
            return weights
        raise InvalidGenerationParameterError(
            f"adapter must be a name, a list of names, a {{name: weight}} dict or None, got {type(spec).__name__}."
        )

    def _resolve_auto(self, spec: Any, prompt: str | None) -> tuple[Any, dict[str, Any] | None]:
        """Replace ``"auto"`` by the router's selection for ``prompt``; return (spec, decision dict)."""
        if not (isinstance(spec, str) and spec == "auto"):
            return spec, None
        from adaptrix_core.routing.selection import decision_dict

        if not self.config.router.name:
            raise InvalidGenerationParameterError(
                "adapter='auto' needs a router: create the engine with router='keyword', 'semantic', "
                "'classifier' or 'hybrid' (or set router.name in the config)."
            )
        decision = self.route(prompt or "")
        return dict(decision.selected), decision_dict(decision)

    def _choose(self, spec: Any, pinned: Sequence[str] = (), prompt: str | None = None) -> AdapterChoice:
        spec, routing = self._resolve_auto(spec, prompt)
        weights = self._parse_adapter(spec)
        if not weights:
            return AdapterChoice(None, {}, routing)
        keep = tuple(pinned) + tuple(weights)
        for name in weights:
            self._ensure_loaded(name, pinned=keep)
        if len(weights) == 1 and next(iter(weights.values())) == 1.0:
            return AdapterChoice(next(iter(weights)), weights, routing)
        mix = composition_name(weights)
        if mix in self._loaded:
            self._loaded.move_to_end(mix)
        else:
            require_capability(self._backend, Capability.LORA_COMPOSITION, "Use one adapter per request.")
            size = self._backend.compose_lora(mix, weights)
            self._loaded[mix] = LoadedAdapter(mix, "composed", size, parts=dict(weights))
            self._evict(keep=keep + (mix,))
        return AdapterChoice(mix, weights, routing)

    # -- making adapters ----------------------------------------------------------------------------
    def create_adapter(self, name: str, layers: Any = "middle", target_modules: Sequence[str] | None = None,
                       rank: int = 16, alpha: float = 32, dropout: float = 0.05) -> AdapterMetadata:
        """Add a new, untrained LoRA adapter to the chosen blocks (in memory until ``save_adapter``).

        ``layers``: ``"middle"`` (the family's middle span), ``"quartiles"``, ``"all"`` or indices;
        ``target_modules=None`` takes the family's defaults present in the model.
        """
        with self._lock:
            backend = self._adapter_backend()
            require_capability(backend, Capability.TRAINING, "A new adapter is made for training; create and train it with backend='hf'.")
            check_adapter_name(name)
            if name in self._loaded:
                raise AdapterError(f"Adapter {name!r} is already loaded; unload it or pick another name.")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise AdapterError(f"rank must be a positive integer, got {rank!r}.")
            if not 0 <= dropout < 1:
                raise AdapterError(f"dropout must be in [0, 1), got {dropout!r}.")
            indices = resolve_layers(layers, self._family, self._description.num_layers)
            targets = resolve_targets(target_modules, self._family, backend.module_names())
            config = {
                "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "bias": "none",
                "target_modules": targets, "layers_to_transform": indices,
                "layers_pattern": backend.layers_path.rsplit(".", 1)[-1],
                "base_model_name_or_path": self._source.canonical_id,
            }
            meta = AdapterMetadata(name=name, base_model=self._source.canonical_id, family=self._family.name,
                                   target_layers=indices, target_modules=targets, rank=rank, alpha=alpha)
            size = backend.inject_lora(name, config)
            self._loaded[name] = LoadedAdapter(name, "memory", size, meta)
            return meta

    def save_adapter(self, name: str, overwrite: bool = False, **metadata: Any) -> AdapterMetadata:
        """Write a loaded adapter to the store (PEFT folder + adaptrix.json with the weights' sha256).

        ``metadata`` sets fields such as ``description``, ``version``, ``performance_metrics`` or
        ``routing={"keywords": [...], "example_prompts": [...]}``.
        """
        with self._lock:
            entry = self._loaded.get(name)
            if entry is None or entry.kind == "composed":
                raise AdapterNotFoundError(f"Adapter {name!r} is not loaded, so there is nothing to save.")
            meta = AdapterMetadata.model_validate({**entry.metadata.model_dump(), **metadata})
            with tempfile.TemporaryDirectory(prefix="adaptrix-save-") as scratch:
                written = self._backend.save_lora(name, Path(scratch), self._source.canonical_id)
                saved = self.adapter_manager.save(written, meta, overwrite=overwrite)
            entry.kind, entry.metadata = "stored", saved
            return saved

    def check_stored_adapter(self, name: str) -> AdapterMetadata:
        """Validate a stored adapter's files and its fit to this model without loading it."""
        with self._lock:
            self._ready()
            meta, config, shapes = self.adapter_manager.validate(name)
            self._check_fits(name, meta, config, shapes)
            return meta
