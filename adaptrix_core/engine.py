"""``ModularAdaptrixEngine``: one loaded base model, assembled from the plugins the config names."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, Mapping, Sequence

from adaptrix_core.compatibility import check_compatibility
from adaptrix_core.config import AdaptrixConfig, load_config
from adaptrix_core.engine_adapters import ACTIVE, AdapterChoice, AdapterServingMixin
from adaptrix_core.engine_rag import RagMixin
from adaptrix_core.engine_training import TrainingMixin
from adaptrix_core.errors import (
    BackendNotFoundError,
    ConfigError,
    EngineClosedError,
    InvalidGenerationParameterError,
    InvalidPromptError,
    PluginError,
)
from adaptrix_core.families import ModelFamily, detect_family
from adaptrix_core.generation import (
    check_generation_keys,
    check_messages,
    check_prompt,
    fold_system_into_user,
    plain_transcript,
    resolve_sampling,
    stream_until_stop,
    trim_at_stop,
    with_system_prompt,
)
from adaptrix_core.model_source import ModelSource, resolve_model
from adaptrix_core.protocols import BaseModelInterface
from adaptrix_core.registry import Registry, collect
from adaptrix_core.routing.service import RouterService
from adaptrix_core.types import CompatibilityReport, ModelDescription, QueryResult, SamplingParams


class ModularAdaptrixEngine(AdapterServingMixin, TrainingMixin, RagMixin):
    """Serve one causal LM through a backend plugin, with the model family's defaults.

    ``model_id``, ``device``, ``adapters_dir`` and ``backend`` override the same fields of ``config``
    (an ``AdaptrixConfig``, a nested dict, or a YAML path); left as None they keep the configured
    values, whose defaults are the embedded model, ``"auto"``, ``"adapters"`` and ``"hf"``. ``router``
    names the router used by ``adapter="auto"`` (keyword, semantic, classifier, hybrid). Nothing is
    loaded until ``initialize()`` or the first generation call.
    """

    def __init__(
        self,
        model_id: str | None = None,
        device: str | None = None,
        adapters_dir: str | None = None,
        backend: str | None = None,
        config: AdaptrixConfig | Mapping[str, Any] | str | None = None,
        router: str | None = None,
    ) -> None:
        overrides = {"model": {"model_id": model_id, "device": device, "backend": backend},
                     "adapters": {"directory": adapters_dir}}
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
        self._backend: BaseModelInterface | None = None
        self._family: ModelFamily | None = None
        self._description: ModelDescription | None = None
        self._source: ModelSource | None = None
        self._registry: Registry | None = None
        self._closed = False
        if router is not None:
            self.config = self.config.model_copy(update={"router": self.config.router.model_copy(update={"name": router})})
        self._init_adapters()
        self.routing = RouterService(self.config.router, self.adapter_manager, self._plugin_registry,
                                     self._load_embedder, self.config.plugins)
        self._init_rag()

    # -- lifecycle -------------------------------------------------------------------------
    def initialize(self) -> "ModularAdaptrixEngine":
        """Load plugins, the backend and the model; detect the family. Calling it again does nothing."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("This engine was cleaned up; create a new ModularAdaptrixEngine.")
            if self._backend is not None:
                return self
            registry = self._plugin_registry()
            name = self.config.model.backend
            if name not in registry.backends:
                raise BackendNotFoundError(
                    f"Backend {name!r} is not registered. Registered backends: "
                    f"{', '.join(sorted(registry.backends)) or 'none (check ADAPTRIX_LOAD_PLUGINS)'}."
                )
            source = resolve_model(self.model_id)
            backend = registry.backends[name]()
            if not isinstance(backend, BaseModelInterface):
                raise PluginError(f"Backend {name!r} does not implement BaseModelInterface.")
            if callable(getattr(backend, "configure", None)):  # optional: a backend reads its plugins.<name> settings
                backend.configure(self.config)
            description = backend.load(source, self.config.model, self.config.resolved_cache_dir())
            family = detect_family(
                registry.families, description.model_type, description.architectures,
                source.canonical_id, forced=self.config.model.family,
            )
            backend.bind_family(family)
            self._registry, self._source, self._description, self._family = registry, source, description, family
            self._backend = backend
            return self

    def cleanup(self) -> None:
        """Free the model; the engine cannot be used afterwards."""
        with self._lock:
            if self._backend is not None:
                self._backend.close()
            self._backend = None
            self._closed = True
            self._history.clear()

    def __enter__(self) -> "ModularAdaptrixEngine":
        return self.initialize()

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()

    def _plugin_registry(self) -> Registry:
        if self._registry is None:
            self._registry = collect()
        return self._registry

    def _load_embedder(self):
        from adaptrix_core.embeddings import get_embedder

        return get_embedder(self.config.router.embedding_model)

    def _ready(self) -> BaseModelInterface:
        if self._backend is None:
            self.initialize()
        return self._backend

    # -- facts ---------------------------------------------------------------------------------
    @property
    def backend(self) -> BaseModelInterface:
        """The loaded backend plugin object (loads the model if needed); for benchmarks and plugins."""
        return self._ready()

    @property
    def family(self) -> ModelFamily:
        """The model family in use (loads the model if needed)."""
        self._ready()
        return self._family

    @property
    def max_context(self) -> int:
        """Context window in tokens: the configured override, else min(model config, family default)."""
        self._ready()
        if self.config.model.max_context:
            return self.config.model.max_context
        limits = [self._family.generation.max_context, self._description.max_position_embeddings]
        return min(int(limit) for limit in limits if limit)

    def get_model_info(self) -> dict[str, Any]:
        """Model id, family, architecture, depth, width, vocabulary, context, dtype, device, backend."""
        backend = self._ready()
        d = self._description
        return {
            "model_id": self.model_id,
            "source": str(self._source.path / (self._source.gguf_file or "")),
            "base_model": self._source.canonical_id,
            "family": self._family.name,
            "architecture": d.architectures[0] if d.architectures else None,
            "model_type": d.model_type,
            "num_layers": d.num_layers,
            "hidden_size": d.hidden_size,
            "vocab_size": d.vocab_size,
            "max_context": self.max_context,
            "num_parameters": d.num_parameters,
            "dtype": d.dtype,
            "device": d.device,
            "backend": backend.name,
            "chat_template": self._uses_chat_template(),
            "middle_layers": self._family.middle_layers(d.num_layers),
            "layers_path": getattr(backend, "layers_path", None),
            **d.extra,
        }

    def check_adapter_compatibility(self, adapter_config: Any) -> CompatibilityReport:
        """Check an adapter config (dict, PEFT config, folder or adapter_config.json) against this model."""
        backend = self._ready()
        return check_compatibility(
            adapter_config, self._family, self._description.num_layers, backend.module_names(),
            (self._source.canonical_id, self.model_id, self._source.gguf_file or ""),
        )

    # -- routing (see RouterService) --------------------------------------------------------------
    @property
    def embedder(self):
        """The shared sentence-embedding model (loaded on first use; RAG and routers use the same one)."""
        return self._load_embedder()

    def get_router(self, name: str | None = None):
        """The router plugin ``name`` (default: the configured one), built once per engine."""
        return self.routing.get_router(name)

    def routing_candidates(self):
        """Cards of every valid adapter in the store (refreshed when an adapter's metadata changes)."""
        return self.routing.candidates()

    def route(self, prompt: str, router: str | None = None):
        """Which adapter(s) ``router`` picks for ``prompt``, with every candidate's score."""
        return self.routing.route(prompt, router)

    def fit_router(self, router: str | None = None, data: Any = None) -> dict[str, Any]:
        """Train the classifier / calibrate semantic thresholds (see ``RouterService.fit``)."""
        return self.routing.fit(router, data)

    def evaluate_router(self, data: Any, router: str | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, confusion matrix and latency of a router on labelled prompts."""
        return self.routing.evaluate(data, router)

    # -- prompts -------------------------------------------------------------------------------
    def _uses_chat_template(self) -> bool:
        setting = self.config.model.use_chat_template
        return self._description.has_chat_template if setting is None else setting

    def _render(self, messages: list[dict[str, str]], gen: Mapping[str, Any]) -> tuple[str, bool]:
        messages = with_system_prompt(messages, self.config.model.system_prompt)
        if not self._uses_chat_template():
            return plain_transcript(messages), False
        if not self._family.chat.system_role:
            messages = fold_system_into_user(messages)
        template_kwargs = {}
        if self._family.chat.thinking_switch:
            thinking = gen.get("enable_thinking")
            template_kwargs["enable_thinking"] = self.config.model.enable_thinking if thinking is None else bool(thinking)
        return self._backend.render_chat(messages, template_kwargs), True

    def _sampling(self, gen: Mapping[str, Any], extra_keys: tuple[str, ...] = ("adapter",)) -> SamplingParams:
        check_generation_keys(gen, extra_keys)
        return resolve_sampling(gen, self._family, self.config.generation, self.max_context)

    def _conversation(self, prompt: str, use_context: bool) -> list[dict[str, str]]:
        history = self._history if use_context else []
        return [*history, {"role": "user", "content": check_prompt(prompt)}]

    def _remember(self, prompt: str, answer: str) -> None:
        self._history.extend([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])

    def reset_context(self) -> None:
        """Forget the conversation kept for ``use_context_by_default``."""
        with self._lock:
            self._history.clear()

    @property
    def context(self) -> list[dict[str, str]]:
        """A copy of the remembered conversation."""
        return [dict(m) for m in self._history]

    # -- generation ------------------------------------------------------------------------------
    def _complete(self, messages: list[dict[str, str]], gen: Mapping[str, Any], route_on: str | None = None) -> QueryResult:
        started = time.perf_counter()
        backend = self._ready()
        params = self._sampling(gen)
        choice = self._choose(gen.get("adapter", ACTIVE), prompt=route_on or messages[-1]["content"])
        prompt, templated = self._render(messages, gen)
        completion = backend.generate([prompt], params, templated=templated, adapters=[choice.target])[0]
        text, stopped = trim_at_stop(completion.text, params.stop)
        return self._result(text, completion.prompt_tokens, completion.completion_tokens,
                            "stop" if stopped else completion.finish_reason, params, started, choice)

    def _result(self, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str,
                params: SamplingParams, started: float, choice: AdapterChoice) -> QueryResult:
        return QueryResult(
            text=text, model_id=self.model_id, family=self._family.name, backend=self._backend.name,
            adapters=list(choice.weights), adapter_weights=dict(choice.weights), routing=choice.routing,
            latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, finish_reason=finish_reason,
            generation={"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                        "top_p": params.top_p, "seed": params.seed, "stop": list(params.stop)},
        )

    def query(self, prompt: str, use_rag: bool = False, top_k: int | None = None, min_score: float | None = None,
              **gen: Any) -> QueryResult:
        """Answer ``prompt`` and say how: text, tokens, latency, family, adapters, routing, sources.

        With ``use_rag=True`` the ``top_k`` best passages of the document index (scoring at least
        ``min_score``) are put into the prompt as numbered context, and ``QueryResult.sources``
        lists them. Routing (``adapter="auto"``) looks at the question itself.
        """
        with self._lock:
            use_context = self.use_context_by_default
            conversation = self._conversation(prompt, use_context)
            sources: list[dict[str, Any]] = []
            if use_rag:
                self._sampling(gen)  # reject bad arguments before retrieving
                rag_messages, sources = self._rag_messages(prompt, top_k, min_score)
                conversation = [*conversation[:-1], *rag_messages]
            result = self._complete(conversation, gen, route_on=prompt)
            result.sources = sources
            if use_context:
                self._remember(prompt, result.text)
            return result

    def generate(self, prompt: str, **gen: Any) -> str:
        """Answer ``prompt`` (wrapped in the chat template when the model has one)."""
        return self.query(prompt, **gen).text

    def chat(self, messages: Sequence[Mapping[str, str]], **gen: Any) -> str:
        """Answer the last user turn of OpenAI-style ``messages`` (engine memory is not used)."""
        with self._lock:
            result = self._complete(check_messages(messages), gen)
            return result.text

    def generate_batch(self, prompts: Sequence[str], adapters: Sequence[Any] | None = None, **gen: Any) -> list[str]:
        """Answer several independent prompts in one left-padded batch.

        ``adapters`` gives each prompt its own adapter (a name, a ``{name: weight}`` mix or None for
        the base model); without it every prompt uses ``gen["adapter"]`` or the active adapters.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise InvalidPromptError("generate_batch() takes a non-empty list of prompt strings.")
        if adapters is not None and (isinstance(adapters, (str, Mapping)) or len(adapters) != len(prompts)):
            raise InvalidGenerationParameterError(
                f"adapters must be a list with one entry per prompt ({len(prompts)}), got {adapters!r}."
            )
        with self._lock:
            backend = self._ready()
            params = self._sampling(gen)
            specs = list(adapters) if adapters is not None else [gen.get("adapter", ACTIVE)] * len(prompts)
            specs = [self._resolve_auto(spec, prompt)[0] for prompt, spec in zip(prompts, specs)]
            pinned: list[str] = []
            for spec in specs:
                pinned.extend(self._parse_adapter(spec))
            targets = [self._choose(spec, pinned=pinned).target for spec in specs]
            rendered = [self._render(self._conversation(p, False), gen) for p in prompts]
            templated = rendered[0][1]
            completions = backend.generate([text for text, _ in rendered], params, templated=templated, adapters=targets)
            self._evict(keep=())
            return [trim_at_stop(c.text, params.stop)[0] for c in completions]

    def stream(self, prompt: str, **gen: Any) -> Iterator[str]:
        """Yield the answer to ``prompt`` piece by piece as it is generated.

        The engine stays busy until the iterator is exhausted or closed: close an abandoned stream
        (``contextlib.closing``) so that other calls can run.
        """
        with self._lock:
            backend = self._ready()
            params = self._sampling(gen)
            choice = self._choose(gen.get("adapter", ACTIVE), prompt=prompt)
            use_context = self.use_context_by_default
            rendered, templated = self._render(self._conversation(prompt, use_context), gen)
            pieces = backend.stream(rendered, params, templated=templated, adapter=choice.target)
        return self._stream_and_remember(pieces, params, prompt, use_context)

    def _stream_and_remember(self, pieces: Iterator[str], params: SamplingParams, prompt: str,
                             use_context: bool) -> Iterator[str]:
        with self._lock:
            parts = []
            for piece in stream_until_stop(pieces, params.stop):
                parts.append(piece)
                yield piece
            if use_context:
                self._remember(prompt, "".join(parts))

