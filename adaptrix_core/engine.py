"""``ModularAdaptrixEngine``: the thin facade over one loaded base model and the services around it.

The engine owns the configuration, the lock, the loaded backend (``LoadedModel``) and the
conversation memory, and delegates every call to a composed service with a declared interface:

* ``adapters`` (``AdapterPool``): the adapter store, loading, LRU, activation, composition;
* ``routing`` (``RouterService``): router plugins for ``adapter="auto"`` (no LLM needed);
* ``documents`` (``DocumentIndex``): the RAG document index (no LLM needed);
* ``prompts`` (``PromptBuilder``) and ``generator`` (``Generator``): templates, sampling, answers;
* ``requests`` (``RequestPlanner``): the seam the server's scheduler uses;
* ``trainer`` (``Trainer``): training and evaluating adapters.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from adaptrix_core.adapters.pool import AdapterPool
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.config import AdaptrixConfig, load_config
from adaptrix_core.errors import BackendNotFoundError, ConfigError, EngineClosedError, InvalidGenerationParameterError, PluginError
from adaptrix_core.generation.prompts import PromptBuilder
from adaptrix_core.generation.requests import RequestPlanner
from adaptrix_core.generation.service import Generator
from adaptrix_core.models.families import ModelFamily, detect_family
from adaptrix_core.models.loaded import LoadedModel
from adaptrix_core.models.source import resolve_model
from adaptrix_core.monitoring.recorder import failure_fields, request_fields
from adaptrix_core.monitoring.tracking import RequestTracker
from adaptrix_core.protocols import BaseModelInterface, RoutingDecision
from adaptrix_core.rag.service import DocumentIndex
from adaptrix_core.registry import Registry, collect
from adaptrix_core.routing.service import RouterService
from adaptrix_core.training.trainer import Trainer
from adaptrix_core.types import CompatibilityReport, QueryResult


def _delegate(service: str, cls: type, method: str | None = None):
    """An engine method that calls ``self.<service>.<method>`` (same name by default), with its docs."""

    def build(function):
        target = getattr(cls, method or function.__name__)

        @functools.wraps(target)
        def call(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(getattr(self, service), method or function.__name__)(*args, **kwargs)

        call.__name__ = call.__qualname__ = function.__name__
        return call

    return build


class ModularAdaptrixEngine:
    """Serve one causal LM through a backend plugin, with the model family's defaults.

    ``model_id``, ``device``, ``adapters_dir`` and ``backend`` override the same fields of ``config``
    (an ``AdaptrixConfig``, a nested dict, or a YAML path); left as None they keep the configured
    values, whose defaults are the embedded model, ``"auto"``, ``"adapters"`` and ``"hf"``. ``router``
    names the router used by ``adapter="auto"`` (keyword, semantic, classifier, hybrid, or a
    plugin's). Nothing is loaded until ``initialize()`` or the first call that needs the model.
    """

    def __init__(self, model_id: str | None = None, device: str | None = None, adapters_dir: str | None = None,
                 backend: str | None = None, config: AdaptrixConfig | Mapping[str, Any] | str | None = None,
                 router: str | None = None) -> None:
        overrides = {"model": {"model_id": model_id, "device": device, "backend": backend},
                     "adapters": {"directory": adapters_dir}, "router": {"name": router}}
        if isinstance(config, AdaptrixConfig):
            self.config = load_config(data=config.model_dump(), overrides=overrides, environ={})
        elif isinstance(config, Mapping):
            self.config = load_config(data=dict(config), overrides=overrides, environ={})
        elif config is None or isinstance(config, str):
            self.config = load_config(path=config, overrides=overrides)
        else:
            raise ConfigError(f"config must be an AdaptrixConfig, a dict or a YAML path, got {type(config).__name__}.")
        self.model_id = self.config.model.model_id
        self.use_context_by_default = False
        self._history: list[dict[str, str]] = []
        self._lock = threading.RLock()
        self._loaded: LoadedModel | None = None
        self._registry: Registry | None = None
        self._closed = False
        config = self.config
        self.monitor = RequestTracker(config.monitoring, config.resolved_cache_dir(), self.model_id,
                                      lambda: self._loaded.backend.name if self._loaded else config.model.backend)
        self.adapter_manager = AdapterManager(config.adapters.directory)
        self.routing = RouterService(config.router, self.adapter_manager, self._plugin_registry, self._load_embedder,
                                     config.plugins)
        self.documents = DocumentIndex(config.rag, self._load_embedder, config.router.embedding_model, self._lock)
        self.prompts = PromptBuilder(config.model, config.generation, self._model)
        self.adapters = AdapterPool(config.adapters, self.adapter_manager, self._model, self._lock, self._route_auto,
                                    busy=lambda: self.requests.busy_adapters(), events=self.monitor.event)
        self.generator = Generator(self.prompts, self.adapters, self.documents, self._model, self._lock)
        self.requests = RequestPlanner(self.prompts, self.adapters, self.documents, self._model, self.generator.result,
                                       self._lock)
        self.trainer = Trainer(self.adapters, self.prompts, self._model, self._lock)

    # -- lifecycle -------------------------------------------------------------------------
    def initialize(self) -> ModularAdaptrixEngine:
        """Load plugins, the backend and the model; detect the family. Calling it again does nothing."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("This engine was cleaned up; create a new ModularAdaptrixEngine.")
            if self._loaded is not None:
                return self
            registry = self._plugin_registry()
            name = self.config.model.backend
            try:
                factory = registry.factory("backends", name)
            except KeyError:
                raise BackendNotFoundError(
                    f"Backend {name!r} is not registered. Registered backends: "
                    f"{', '.join(sorted(registry.backends)) or 'none (check ADAPTRIX_LOAD_PLUGINS)'}."
                ) from None
            source = resolve_model(self.model_id)
            backend = factory()
            if not isinstance(backend, BaseModelInterface):
                raise PluginError(f"Backend {name!r} does not implement BaseModelInterface.")
            if callable(getattr(backend, "configure", None)):  # optional: the backend reads plugins.<name> etc.
                backend.configure(self.config)
            description = backend.load(source, self.config.model, self.config.resolved_cache_dir())
            family = detect_family(registry.families, description.model_type, description.architectures,
                                   description.extra.get("base_model") or source.canonical_id,
                                   forced=self.config.model.family)
            backend.bind_family(family)
            self._loaded = LoadedModel(backend, family, description, source, self.model_id)
            return self

    def cleanup(self) -> None:
        """Free the model; the engine cannot be used afterwards."""
        with self._lock:
            if self._loaded is not None:
                self._loaded.backend.close()
            self._loaded = None
            self._closed = True
            self._history.clear()
        self.monitor.close()

    def __enter__(self) -> ModularAdaptrixEngine:
        return self.initialize()

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()

    def _model(self) -> LoadedModel:
        if self._loaded is None:
            self.initialize()
        return self._loaded

    def _plugin_registry(self) -> Registry:
        if self._registry is None:
            self._registry = collect()
        return self._registry

    def _load_embedder(self):
        from adaptrix_core.embeddings import embedder_for

        return embedder_for(self.config)

    def _route_auto(self, prompt: str) -> RoutingDecision:
        if not self.routing.settings.name:
            raise InvalidGenerationParameterError(
                f"adapter='auto' needs a router: create the engine with router= one of "
                f"{', '.join(self.routing.registered()) or 'the registered routers'} (or set router.name in the config).")
        return self.routing.route(prompt)

    # -- facts ---------------------------------------------------------------------------------
    @property
    def lock(self) -> Any:
        """The engine's re-entrant lock: hold it around one model step so other calls interleave."""
        return self._lock

    @property
    def backend(self) -> BaseModelInterface:
        """The loaded backend plugin object (loads the model if needed); for benchmarks and plugins."""
        return self._model().backend

    @property
    def family(self) -> ModelFamily:
        """The model family in use (loads the model if needed)."""
        return self._model().family

    @property
    def max_context(self) -> int:
        """Context window in tokens: the configured override, else min(model config, family default)."""
        return self.prompts.max_context

    @property
    def embedder(self) -> Any:
        """The shared sentence-embedding model (loaded on first use; RAG and routers use the same one)."""
        return self._load_embedder()

    def get_model_info(self) -> dict[str, Any]:
        """Model id, family, architecture, depth, width, vocabulary, context, dtype, device, backend."""
        loaded = self._model()
        d, source, backend = loaded.description, loaded.source, loaded.backend
        return {
            "model_id": self.model_id, "source": str(source.path / (source.gguf_file or "")),
            "base_model": source.canonical_id, "family": loaded.family.name,
            "architecture": d.architectures[0] if d.architectures else None, "model_type": d.model_type,
            "num_layers": d.num_layers, "hidden_size": d.hidden_size, "vocab_size": d.vocab_size,
            "max_context": self.max_context, "num_parameters": d.num_parameters, "dtype": d.dtype,
            "device": d.device, "backend": backend.name, "capabilities": sorted(backend.capabilities),
            "chat_template": self.prompts.uses_chat_template(), "middle_layers": loaded.family.middle_layers(d.num_layers),
            "layers_path": backend.layers_path, **d.extra,
        }

    def check_adapter_compatibility(self, adapter_config: Any) -> CompatibilityReport:
        """Check an adapter config (dict, PEFT config, folder or adapter_config.json) against this model."""
        return self.adapters.checker.report(adapter_config)

    # -- conversation memory ---------------------------------------------------------------------
    def reset_context(self) -> None:
        """Forget the conversation kept for ``use_context_by_default``."""
        with self._lock:
            self._history.clear()

    @property
    def context(self) -> list[dict[str, str]]:
        """A copy of the remembered conversation."""
        return [dict(m) for m in self._history]

    # -- generation (see Generator) --------------------------------------------------------------
    def query(self, prompt: str, use_rag: bool = False, top_k: int | None = None, min_score: float | None = None,
              **gen: Any) -> QueryResult:
        """Answer ``prompt`` and say how: text, tokens, latency, family, adapters, routing, sources.

        With ``use_rag=True`` the ``top_k`` best passages of the document index (scoring at least
        ``min_score``) are put into the prompt as numbered context, and ``QueryResult.sources``
        lists them. Routing (``adapter="auto"``) looks at the question itself.
        """
        with self._lock, self.monitor.track(prompt) as done:
            use_context = self.use_context_by_default
            history = list(self._history) if use_context else []
            result = self.generator.query(prompt, history, use_rag, top_k, min_score, **gen)
            done(result)
            if use_context:
                self._history.extend([{"role": "user", "content": prompt}, {"role": "assistant", "content": result.text}])
            return result

    def generate(self, prompt: str, **gen: Any) -> str:
        """Answer ``prompt`` (wrapped in the chat template when the model has one)."""
        return self.query(prompt, **gen).text

    def chat(self, messages: Sequence[Mapping[str, str]], **gen: Any) -> str:
        """Answer the last user turn of OpenAI-style ``messages`` (engine memory is not used)."""
        with self.monitor.track() as done:
            result = self.generator.chat(messages, **gen)
            done(result)
        return result.text

    def generate_batch(self, prompts: Sequence[str], adapters: Sequence[Any] | None = None, **gen: Any) -> list[str]:
        """Answer several independent prompts in one left-padded batch.

        ``adapters`` gives each prompt its own adapter (a name, a ``{name: weight}`` mix or None for
        the base model); without it every prompt uses ``gen["adapter"]`` or the active adapters.
        """
        with self.monitor.track() as done:
            results = self.generator.batch(prompts, adapters, **gen)
            for result in results:
                done(result)
        return [result.text for result in results]

    def stream(self, prompt: str, **gen: Any) -> Iterator[str]:
        """Yield the answer to ``prompt`` piece by piece as it is generated.

        The engine stays busy until the iterator is exhausted or closed: close an abandoned stream
        (``contextlib.closing``) so that other calls can run.
        """
        with self._lock, self.monitor.track(prompt):
            use_context = self.use_context_by_default
            history = list(self._history) if use_context else []
            pieces, lock = self.generator.stream(prompt, history, **gen)
        return self._stream_and_remember(pieces, lock, prompt, use_context)

    def _stream_and_remember(self, pieces: Iterator[str], lock: Any, prompt: str, use_context: bool) -> Iterator[str]:
        started, ttft_ms, parts = time.perf_counter(), None, []
        with lock, self.monitor.track(prompt):
            for piece in pieces:
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - started) * 1000
                parts.append(piece)
                yield piece
            if use_context:
                self._history.extend([{"role": "user", "content": prompt}, {"role": "assistant", "content": "".join(parts)}])
            self.monitor.log.record_request(model=self.model_id, backend=self.backend.name, source=self.monitor.source,
                                            latency_ms=(time.perf_counter() - started) * 1000, ttft_ms=ttft_ms,
                                            finish_reason="stop", prompt=prompt, answer="".join(parts))

    # -- adapters (see AdapterPool) ----------------------------------------------------------------
    def list_adapters(self) -> list[dict[str, Any]]:
        """Every adapter in the store and in memory (and, on a remote backend, the upstream's own models)."""
        rows = self.adapters.list_adapters()
        merge = getattr(self._loaded.backend, "adapter_rows", None) if self._loaded else None
        return merge(rows, self.loaded_adapters(), self.active_adapters()) if merge else rows

    @_delegate("adapters", AdapterPool)
    def active_adapters(self): ...

    @_delegate("adapters", AdapterPool)
    def loaded_adapters(self): ...

    @_delegate("adapters", AdapterPool)
    def load_adapter(self): ...

    @_delegate("adapters", AdapterPool)
    def preload(self): ...

    @_delegate("adapters", AdapterPool)
    def unload_adapter(self): ...

    @_delegate("adapters", AdapterPool)
    def switch_adapter(self): ...

    @_delegate("adapters", AdapterPool)
    def memory_report(self): ...

    @_delegate("adapters", AdapterPool)
    def create_adapter(self): ...

    @_delegate("adapters", AdapterPool)
    def save_adapter(self): ...

    @_delegate("adapters", AdapterPool)
    def check_stored_adapter(self): ...

    @_delegate("adapters", AdapterPool)
    def import_adapter(self): ...

    # -- routing (see RouterService) ---------------------------------------------------------------
    @_delegate("routing", RouterService)
    def get_router(self): ...

    @_delegate("routing", RouterService, "candidates")
    def routing_candidates(self): ...

    @_delegate("routing", RouterService)
    def route(self): ...

    @_delegate("routing", RouterService, "fit")
    def fit_router(self): ...

    @_delegate("routing", RouterService, "evaluate")
    def evaluate_router(self): ...

    # -- the document index (see DocumentIndex) -----------------------------------------------------
    @_delegate("documents", DocumentIndex)
    def add_documents(self): ...

    @_delegate("documents", DocumentIndex)
    def remove_document(self): ...

    @_delegate("documents", DocumentIndex)
    def list_documents(self): ...

    @_delegate("documents", DocumentIndex)
    def index_stats(self): ...

    @_delegate("documents", DocumentIndex)
    def retrieve(self): ...

    # -- training (see Trainer) -------------------------------------------------------------------
    @_delegate("trainer", Trainer)
    def train_adapter(self): ...

    @_delegate("trainer", Trainer)
    def evaluate(self): ...

    # -- the scheduler's seam (see RequestPlanner) ---------------------------------------------------
    @_delegate("requests", RequestPlanner)
    def prepare_request(self): ...

    def finish_request(self, prepared: Any, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str,
                       ttft_ms: float | None = None, source: str | None = None) -> QueryResult:
        """The ``QueryResult`` of a finished request (see ``RequestPlanner``), logged as from ``source`` (or monitor.source)."""
        result = self.requests.finish_request(prepared, text, prompt_tokens, completion_tokens, finish_reason)
        self.monitor.log.record_request(**request_fields(result, source=source or self.monitor.source, ttft_ms=ttft_ms))
        return result

    def release_request(self, prepared: Any, error: BaseException | None = None, source: str | None = None) -> None:
        """Unpin a request that ends without a result (see ``RequestPlanner``); a failure is recorded."""
        self.requests.release_request(prepared)
        if error is not None:
            self.record_failure(error, source, adapter_weights=prepared.choice.weights)

    def record_failure(self, error: BaseException, source: str | None = None, adapter_weights: dict | None = None) -> None:
        """Log a failed request (also one refused before it was prepared: bad arguments, unknown adapter)."""
        self.monitor.log.record_request(**failure_fields(error, source=source or self.monitor.source, model=self.model_id,
                                                         adapter_weights=adapter_weights))

    @_delegate("requests", RequestPlanner)
    def adapter_available(self): ...

    @_delegate("requests", RequestPlanner)
    def busy_adapters(self): ...
