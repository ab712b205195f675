"""``AdapterPool``: serving many LoRA adapters from one loaded base model: store, LRU cache,
switching, composition, and the per-request adapter choice.

Every public method takes the lock it was given (the engine's), so concurrent requests never see
each other's adapter. It needs the loaded model (a callable returning ``LoadedModel``) and the
adapter store; routing for ``adapter="auto"`` comes in as a callable.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adaptrix_core.adapters.checks import DERIVED_FIELDS, AdapterChecker
from adaptrix_core.adapters.choice import ACTIVE, AdapterChoice, composition_name, parse_adapter_spec  # noqa: F401
from adaptrix_core.adapters.metadata import WEIGHTS_FILE, AdapterMetadata, check_adapter_name
from adaptrix_core.adapters.store import AdapterManager, check_peft_folder
from adaptrix_core.capabilities import has_capability, require_capability
from adaptrix_core.config import AdapterSettings
from adaptrix_core.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    BackendCapabilityError,
)
from adaptrix_core.models.layers import resolve_layers, resolve_targets
from adaptrix_core.models.loaded import LoadedModel
from adaptrix_core.protocols import AdapterBackend, Capability, RoutingDecision


@dataclass
class LoadedAdapter:
    """An adapter present in the model: from the store, made in memory (unsaved) or composed."""

    name: str
    kind: str  # "stored", "memory" or "composed"
    bytes: int
    metadata: AdapterMetadata | None = None
    parts: dict[str, float] = field(default_factory=dict)


class AdapterPool:
    """The adapters in the served model: loaded ones (LRU), the active set, compositions.

    ``model`` returns the ``LoadedModel`` (loading it on first use); ``store`` is the adapter store;
    ``route(prompt)`` answers ``adapter="auto"``; ``busy()`` names adapters that requests in flight
    use (never evicted); ``lock`` is the engine's lock.
    """

    def __init__(self, settings: AdapterSettings, store: AdapterManager, model: Callable[[], LoadedModel],
                 lock: Any, route: Callable[[str], RoutingDecision], busy: Callable[[], set[str]] = set,
                 events: Callable[[str, str, float | None], None] = lambda kind, name, seconds: None):
        self.settings = settings
        self.adapter_manager = store
        self._model = model
        self._lock = lock
        self._route = route
        self._busy = busy
        self._events = events  # (kind, adapter, seconds): load, unload and evict, for the request log
        self._loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._active: dict[str, float] = {}
        self.checker = AdapterChecker(model, store)

    # The loaded model's parts, read at call time (the engine may load the model lazily).
    @property
    def _backend(self) -> Any:
        return self._model().backend

    @property
    def _family(self) -> Any:
        return self._model().family

    @property
    def _description(self) -> Any:
        return self._model().description

    @property
    def _source(self) -> Any:
        return self._model().source

    def _ready(self) -> Any:
        return self._model().backend

    def _check_fits(self, name: str, meta: AdapterMetadata, config: Mapping[str, Any], weights_file: Path | None = None):
        backend = self._adapter_backend()
        check = getattr(backend, "check_adapter", None)  # a backend without a module tree checks itself
        if check is not None:
            return check(name, meta, config)
        return self.checker.check_fits(name, meta, config, weights_file)

    def is_loaded(self, name: str) -> bool:
        """Whether adapter (or composition) ``name`` is in the model now."""
        return name in self._loaded

    def discard_unsaved(self, name: str) -> None:
        """Take an unsaved (in-memory) adapter out of the model, e.g. after a failed training run."""
        with self._lock:
            entry = self._loaded.get(name)
            if entry is not None and entry.kind == "memory":
                self._drop(name)

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
            started = time.perf_counter()
            self._drop(name)
            self._active.pop(name, None)
            self._events("unload", name, time.perf_counter() - started)

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
            return {
                "adapters": adapters,
                "total_adapter_bytes": sum(adapters.values()),
                "base_model_bytes": self._backend.memory_report().get("weights")  # a quantized backend knows it
                or (info.num_parameters or 0) * bytes_per_parameter,
                "cache_size": self.settings.cache_size,
                "loaded": self.loaded_adapters(),
                "active": self.active_adapters(),
            }

    def _adapter_backend(self, capability: str = Capability.LORA) -> AdapterBackend:
        backend = self._ready()
        if not isinstance(backend, AdapterBackend):
            require_capability(backend, Capability.LORA, "Serve adapters with backend='hf' (or 'onnx').")
        require_capability(backend, capability)
        return backend

    def _ensure_loaded(self, name: str, pinned: Sequence[str]) -> LoadedAdapter:
        backend = self._adapter_backend()
        if name not in self._loaded and getattr(backend, "serves_adapter", lambda _: False)(name):
            # A remote server's own model (adaptrix_plugins/backends/remote): nothing to copy or inject.
            stored = (self.adapter_manager.directory / name / "adapter_config.json").is_file()
            meta = self.adapter_manager.metadata(name) if stored else None
            self._loaded[name] = LoadedAdapter(name, "served", 0, meta)
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        meta, config, _ = self.adapter_manager.validate(name)
        weights = self.adapter_manager.path(name) / WEIGHTS_FILE
        self._check_fits(name, meta, config, weights)
        started = time.perf_counter()
        size = backend.inject_lora(name, config, weights)
        self._events("load", name, time.perf_counter() - started)
        entry = LoadedAdapter(name, "stored", size, meta)
        self._loaded[name] = entry
        self._evict(keep=pinned)
        return entry

    def _drop(self, name: str) -> None:
        for other, entry in list(self._loaded.items()):
            if entry.kind == "composed" and name in entry.parts:
                self._backend.remove_lora(other)
                del self._loaded[other]
        self._backend.remove_lora(name)
        del self._loaded[name]

    def _evict(self, keep: Sequence[str]) -> None:
        """Unload least recently used adapters beyond ``cache_size`` (never unsaved or ``keep`` ones)."""
        limit = self.settings.cache_size
        protected = set(keep) | self._busy()  # adapters of requests in flight
        for entry in list(self._loaded.values()):
            if entry.kind == "composed":
                protected.update(entry.parts if entry.name in protected else ())
        while True:
            evictable = [n for n, e in self._loaded.items() if e.kind != "memory" and n not in protected]
            if len(self._loaded) <= limit or not evictable:
                return
            started = time.perf_counter()
            self._drop(evictable[0])
            self._events("evict", evictable[0], time.perf_counter() - started)

    # -- per-request choice -------------------------------------------------------------------------
    def _parse_adapter(self, spec: Any) -> dict[str, float]:
        return parse_adapter_spec(spec, self._active)

    def _resolve_auto(self, spec: Any, prompt: str | None) -> tuple[Any, dict[str, Any] | None]:
        """Replace ``"auto"`` by the router's selection for ``prompt``; return (spec, decision dict)."""
        if not (isinstance(spec, str) and spec == "auto"):
            return spec, None
        from adaptrix_core.routing.selection import decision_dict

        decision = self._route(prompt or "")
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
            backend = self._adapter_backend()
            if not has_capability(backend, Capability.LORA_COMPOSITION):
                raise BackendCapabilityError(backend.name, f"weighted adapter mixes ({mix})",
                                             "Use one adapter per request (with adapter='auto', set router.top_k: 1).")
            size = backend.compose_lora(mix, weights)
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
            backend = self._adapter_backend(Capability.TRAINING)
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
                                   base_fingerprint=backend.fingerprint(),
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
                written = self._adapter_backend(Capability.TRAINING).save_lora(name, Path(scratch), self._source.canonical_id)
                saved = self.adapter_manager.save(written, meta, overwrite=overwrite)
            entry.kind, entry.metadata = "stored", saved
            return saved

    def check_stored_adapter(self, name: str) -> AdapterMetadata:
        """Validate a stored adapter's files and its fit to this model without loading it."""
        with self._lock:
            self._ready()
            meta, config, _ = self.adapter_manager.validate(name)
            self._check_fits(name, meta, config, self.adapter_manager.path(name) / WEIGHTS_FILE)
            return meta

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
        extra = {key: value for key, value in metadata.items() if key not in DERIVED_FIELDS}
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
