"""``RemoteBackend``: the engine's model is an OpenAI-compatible server (vLLM, ``adaptrix serve``, ...).

Adaptrix keeps routing, RAG, the adapter store and its checks; the upstream does the decoding. The
model id is the server's base URL (``http://vllm:8000/v1``).

Prompts. The upstream applies its own chat template, so ``render_chat`` does not template: it
returns the engine's final messages (system prompt added, the family's quirks applied) as a JSON
envelope, ``{"messages": [...], "chat_template_kwargs": {...}}``, and ``generate`` / ``stream`` send
it to ``/v1/chat/completions``. A prompt the engine did not template (``use_chat_template: false``)
goes to ``/v1/completions`` as it is. ``count_tokens`` has no tokenizer: it estimates (a quarter of
the UTF-8 bytes, plus 4 per chat message), and the answers' token counts are the upstream's ``usage``.

Adapters. The upstream's models are the adapters: ``adapter="name"`` sends ``model: name`` and the
base model sends the upstream's base model id. A store adapter the upstream does not serve is
registered with vLLM's ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` (the path as the
upstream sees it, ``plugins.remote.path_map``) and removed with ``/v1/unload_lora_adapter``; only
adapters this backend registered are ever unloaded. Weighted mixes need an Adaptrix upstream, which
receives them in the ``adapter`` field of the request (an extension of the OpenAI body); any other
upstream makes a mix a ``BackendCapabilityError``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

from adaptrix_core.errors import (
    AdapterIncompatibleError,
    BackendCapabilityError,
    EngineClosedError,
    InvalidPromptError,
    ModelLoadError,
    RemoteBackendError,
)
from adaptrix_core.protocols import Capability
from adaptrix_core.types import Completion, ModelDescription, SamplingParams
from adaptrix_plugins.backends.remote.catalogue import UpstreamModels, map_path, merge_listing, parse_models
from adaptrix_plugins.backends.remote.client import RemoteClient
from adaptrix_plugins.backends.remote.settings import RemoteSettings, remote_settings

log = logging.getLogger("adaptrix.remote")
ENVELOPE_KEY = "messages"
MIX_HINT = ("vLLM and other OpenAI-compatible servers run one LoRA adapter per request: ask for one adapter, or "
            "set router.top_k: 1 so that adapter='auto' picks one. Mixes pass through only to an adaptrix serve upstream.")
TRAIN_HINT = "Train and save adapters with backend='hf'; the store's adapters are then served here by name."


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` probably encodes to, without a tokenizer: a quarter of its UTF-8 bytes, rounded up."""
    return -(-len(text.encode("utf-8")) // 4)


class RemoteBackend:
    """Generation through an upstream server's OpenAI-compatible API (see the module docstring)."""

    name = "remote"
    layers_path = None

    def __init__(self, settings: RemoteSettings | None = None, transport: Any = None):
        self.capabilities = frozenset({Capability.LORA, Capability.STREAMING, Capability.CONCURRENT_REQUESTS})
        self.settings = settings or RemoteSettings()
        self.url: str | None = None
        self._transport = transport  # an httpx transport, for tests
        self._client: RemoteClient | None = None
        self._models: UpstreamModels | None = None
        self._models_at = 0.0
        self._models_lock = threading.Lock()
        self._registered: set[str] = set()  # adapters this backend loaded into the upstream
        self._mixes: dict[str, dict[str, float]] = {}
        self._family: Any = None

    # -- lifecycle --------------------------------------------------------------------------------------
    def configure(self, config: Any) -> None:
        """Take ``plugins.remote`` from the engine's configuration (validated: a bad value is a ``ConfigError``)."""
        self.settings = remote_settings(config.plugins.get(self.name, {}))

    def load(self, source: Any, settings: Any, cache_dir: Path) -> ModelDescription:
        """Connect to the server at ``source.url`` and read its models (``GET /v1/models``).

        An unreachable server raises ``UpstreamUnavailableError`` (after the configured retries), an
        answer that is not an OpenAI model list ``RemoteBackendError``.
        """
        url = getattr(source, "url", None)
        if getattr(source, "kind", None) != "url" or not url:
            raise ModelLoadError(
                f"The remote backend takes the URL of an OpenAI-compatible server as the model id, e.g. "
                f"ModularAdaptrixEngine('http://127.0.0.1:8000/v1', backend='remote'); got {source.model_id!r}.")
        self.url = url
        self._client = RemoteClient(url, self.settings, transport=self._transport)
        try:
            models = self.upstream_models(refresh=True)
        except Exception:
            self.close()
            raise
        return ModelDescription(
            model_type=None, architectures=(), num_layers=0, hidden_size=0, vocab_size=0,
            max_position_embeddings=models.max_model_len, dtype="remote", device=url, num_parameters=None,
            has_chat_template=True,
            extra={"base_model": models.base, "source": url, "upstream_server": models.server},
        )

    def bind_family(self, family: Any) -> None:
        self._family = family

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _require(self) -> RemoteClient:
        if self._client is None:
            raise EngineClosedError("The remote backend is not connected (the engine was cleaned up).")
        return self._client

    # -- what the upstream serves ---------------------------------------------------------------------------
    def upstream_models(self, refresh: bool = False) -> UpstreamModels:
        """The upstream's model list, asked again when ``refresh`` or older than ``models_ttl`` seconds."""
        client = self._require()
        with self._models_lock:
            stale = time.monotonic() - self._models_at > self.settings.models_ttl
            if refresh or self._models is None or stale:
                models = parse_models(client.get_json("models"), f"{client.base_url}/models", self.settings.base_model)
                self._models, self._models_at = models, time.monotonic()
                if models.is_adaptrix:
                    self._upstream_is_adaptrix()
            return self._models

    def serves_adapter(self, name: str) -> bool:
        """True when the upstream serves ``name`` itself (no store copy or registration needed).

        A name missing from the cached list is looked up again: another gateway may have loaded it.
        """
        asked_at = self._models_at
        if name in self.upstream_models().adapters:
            return True
        if self._models_at != asked_at:  # the list was just read again
            return False
        return name in self.upstream_models(refresh=True).adapters

    def adapter_rows(self, rows: Sequence[Mapping[str, Any]], loaded: Sequence[str],
                     active: Sequence[str]) -> list[dict[str, Any]]:
        """``engine.list_adapters()`` rows merged with the upstream's adapters (see ``merge_listing``)."""
        return merge_listing(rows, self.upstream_models(), loaded, active)

    def _upstream_is_adaptrix(self) -> None:
        self.capabilities = self.capabilities | {Capability.LORA_COMPOSITION}

    # -- text level -------------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Mapping[str, str]], template_kwargs: Mapping[str, Any]) -> str:
        """The messages as a JSON envelope for ``generate``: the upstream applies its own chat template."""
        envelope: dict[str, Any] = {ENVELOPE_KEY: [dict(m) for m in messages]}
        if template_kwargs:
            envelope["chat_template_kwargs"] = dict(template_kwargs)
        return json.dumps(envelope, ensure_ascii=False)

    def count_tokens(self, text: str) -> int:
        """An estimate (no tokenizer here): see :func:`estimate_tokens`; 4 more per chat message."""
        envelope = _envelope(text, strict=False)
        if envelope is None:
            return estimate_tokens(text)
        return sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in envelope[ENVELOPE_KEY])

    def module_names(self) -> list[str]:
        return []

    def memory_report(self) -> dict[str, int]:
        return {}

    # -- generation -------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], params: SamplingParams, *, templated: bool,
                 adapters: Sequence[str | None] | None = None) -> list[Completion]:
        """One request per prompt, sent concurrently (at most ``max_connections`` at once)."""
        self._require()
        targets = list(adapters) if adapters is not None else [None] * len(prompts)
        bodies = [self._body(prompt, params, templated, target, False) for prompt, target in zip(prompts, targets)]
        if len(bodies) == 1:
            return [self._complete(bodies[0], templated)]
        with ThreadPoolExecutor(max_workers=min(len(bodies), self.settings.max_connections),
                                thread_name_prefix="adaptrix-remote") as pool:
            return list(pool.map(lambda body: self._complete(body, templated), bodies))

    def stream(self, prompt: str, params: SamplingParams, *, templated: bool, adapter: str | None = None) -> Iterator[str]:
        """Yield the answer's text pieces from the upstream's server-sent events."""
        client = self._require()
        body = self._body(prompt, params, templated, adapter, True)
        with closing(client.post_stream(_endpoint(templated), body)) as events:  # closed early: the upstream stops
            for event in events:
                self._note_answer(event)
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content") if templated else choice.get("text")
                    if piece:
                        yield piece

    def _body(self, prompt: str, params: SamplingParams, templated: bool, target: str | None, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model_for(target)}
        if templated:
            envelope = _envelope(prompt, strict=True)
            body["messages"] = envelope[ENVELOPE_KEY]
            if envelope.get("chat_template_kwargs"):
                body["chat_template_kwargs"] = envelope["chat_template_kwargs"]
        else:
            body["prompt"] = prompt
        body.update({"max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p})
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.ignore_eos:
            body["ignore_eos"] = True
        if target in self._mixes:
            body["adapter"] = dict(self._mixes[target])
        body["stream"] = stream
        return body

    def _model_for(self, target: str | None) -> str:
        if target is None:
            return self._models.base  # read at load; it never changes while the upstream runs
        return target

    def _complete(self, body: dict[str, Any], templated: bool) -> Completion:
        client = self._require()
        path = _endpoint(templated)
        answer = client.post_json(path, body)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] if templated else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise RemoteBackendError(
                f"The upstream server at {client.base_url}/{path} answered without a completion: {str(answer)[:200]}",
                url=f"{client.base_url}/{path}") from None
        self._note_answer(answer)
        text = text or ""
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = self.count_tokens(json.dumps({ENVELOPE_KEY: body["messages"]}) if templated else body["prompt"])
        if not isinstance(completion_tokens, int):
            completion_tokens = estimate_tokens(text)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text, prompt_tokens, completion_tokens, finish)

    def _note_answer(self, answer: Any) -> None:
        # adaptrix serve marks every answer with an "adaptrix" object: mixes can pass through to it.
        if isinstance(answer, dict) and "adaptrix" in answer and Capability.LORA_COMPOSITION not in self.capabilities:
            self._upstream_is_adaptrix()

    # -- adapters ---------------------------------------------------------------------------------------------
    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        """Empty: the upstream checks an adapter's shapes when it loads it."""
        return {}

    def check_adapter(self, name: str, metadata: Any, config: Mapping[str, Any]) -> None:
        """Refuse a store adapter made for another base model than the upstream serves (``AdapterIncompatibleError``)."""
        models = self.upstream_models()
        base = getattr(metadata, "base_model", None) or config.get("base_model_name_or_path")
        if not models.is_base_model(base):
            raise AdapterIncompatibleError(name, [
                f"The adapter was trained on base model {base!r}; the upstream at {self.url} serves {models.base!r}."])

    def inject_lora(self, name: str, config: Mapping[str, Any], weights_file: Path | None = None) -> int:
        """Register store adapter ``name`` with the upstream (``POST /v1/load_lora_adapter``); return its bytes."""
        client = self._require()
        if weights_file is None:
            raise BackendCapabilityError(self.name, "creating adapters", TRAIN_HINT)
        folder = str(Path(weights_file).resolve().parent)
        remote_path = map_path(folder, self.settings.path_map)
        try:
            client.post_text("load_lora_adapter", {"lora_name": name, "lora_path": remote_path})
        except RemoteBackendError as exc:
            self._models_at = 0.0  # it may be there after all: look again next time
            hint = "" if self.settings.path_map else (
                " The upstream read the adapter at the local path; if it runs elsewhere, set plugins.remote.path_map.")
            raise type(exc)(f"Loading adapter {name!r} from {remote_path!r} into the upstream failed: {exc}{hint}",
                            url=exc.url, status=exc.status, upstream_message=exc.upstream_message,
                            error_type=exc.error_type, code=exc.code) from None
        self._registered.add(name)
        self._models_at = 0.0
        return Path(weights_file).stat().st_size

    def remove_lora(self, name: str) -> None:
        """Forget a mix, or unload an adapter this backend registered (``POST /v1/unload_lora_adapter``).

        Adapters the upstream served on its own are left loaded there: other clients may use them.
        """
        if self._mixes.pop(name, None) is not None or name not in self._registered:
            return
        client = self._require()
        try:
            client.post_text("unload_lora_adapter", {"lora_name": name})
        except RemoteBackendError as exc:
            if exc.status != 404:
                raise
            log.warning("adapter %r was already gone from the upstream: %s", name, exc.upstream_message)
        self._registered.discard(name)
        self._models_at = 0.0

    def compose_lora(self, name: str, weights: Mapping[str, float]) -> int:
        """Remember mix ``name`` for an Adaptrix upstream, which composes it; other upstreams cannot."""
        if Capability.LORA_COMPOSITION not in self.capabilities:
            raise BackendCapabilityError(self.name, f"weighted adapter mixes ({name})", MIX_HINT)
        self._mixes[name] = dict(weights)
        return 0

    def save_lora(self, name: str, folder: Path, base_model: str) -> Path:
        raise BackendCapabilityError(self.name, "saving adapters", TRAIN_HINT)

    def train_lora(self, name: str, examples: Sequence[tuple[str, str]], options: Mapping[str, Any],
                   progress: Any = None) -> dict[str, Any]:
        raise BackendCapabilityError(self.name, "training", TRAIN_HINT)


def _endpoint(templated: bool) -> str:
    return "chat/completions" if templated else "completions"


def _envelope(text: str, strict: bool) -> dict[str, Any] | None:
    """The JSON envelope ``render_chat`` made, or None (``strict``: ``InvalidPromptError``) for other text."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get(ENVELOPE_KEY), list):
            return data
    if strict:
        raise InvalidPromptError(
            "A templated prompt for the remote backend must be what its render_chat returned (a JSON "
            "object with 'messages'); plain prompts go with templated=False.")
    return None
