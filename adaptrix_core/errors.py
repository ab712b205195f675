"""Typed errors with plain-language messages.

Every error Adaptrix raises on bad input derives from :class:`AdaptrixError`, so callers can catch
one type; the subclasses say what went wrong. Messages name the offending value and, where there is
one, the fix.
"""

from __future__ import annotations

from typing import Any


class AdaptrixError(Exception):
    """Base class of every error Adaptrix raises on purpose."""


class ConfigError(AdaptrixError, ValueError):
    """A configuration file, environment variable or argument holds a bad value."""


class ModelNotFoundError(AdaptrixError, FileNotFoundError):
    """The model id names no local folder, GGUF file, alias or cached hub model."""


class ModelLoadError(AdaptrixError, RuntimeError):
    """The model files exist but could not be loaded."""


class UnsupportedFamilyError(AdaptrixError, ValueError):
    """No registered model family fits the model, or a named family does not exist."""


class BackendNotFoundError(AdaptrixError, ValueError):
    """The configured backend name is not registered by any plugin."""


class DeviceNotAvailableError(AdaptrixError, RuntimeError):
    """The requested device (cuda, mps) is not available on this machine."""


class PluginError(AdaptrixError, RuntimeError):
    """A plugin failed to load or registered something invalid."""


class BackendCapabilityError(AdaptrixError, RuntimeError):
    """The loaded backend lacks a capability the call needs (LoRA adapters, training, mixed batches, ...)."""

    def __init__(self, backend: str, capability: str, hint: str = ""):
        self.backend = backend
        self.capability = capability
        super().__init__(f"The {backend!r} backend does not support {capability}." + (f" {hint}" if hint else ""))


class InvalidGenerationParameterError(AdaptrixError, ValueError):
    """A generation argument (max_new_tokens, temperature, task_type, ...) is unknown or out of range."""


class InvalidPromptError(AdaptrixError, ValueError):
    """A prompt or chat message list is empty or malformed."""


class ContextOverflowError(AdaptrixError, ValueError):
    """The prompt does not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, max_context: int):
        self.prompt_tokens = prompt_tokens
        self.max_context = max_context
        super().__init__(
            f"The prompt is {prompt_tokens} tokens long but the model's context window holds "
            f"{max_context} tokens, leaving no room for an answer. Shorten the prompt (or the "
            "conversation: engine.reset_context())."
        )


class EngineClosedError(AdaptrixError, RuntimeError):
    """The engine was cleaned up and can no longer generate."""


class AdapterError(AdaptrixError, ValueError):
    """An adapter is missing, corrupt, tampered with or incompatible with the loaded model."""


class AdapterNotFoundError(AdapterError, LookupError):
    """No adapter of that name is in the store (or loaded)."""


class AdapterCorruptError(AdapterError):
    """An adapter's files are missing, unreadable or inconsistent with each other."""


class AdapterIntegrityError(AdapterError):
    """An adapter's weights do not match the sha256 recorded in its metadata (tampered or damaged)."""


class AdapterIncompatibleError(AdapterError):
    """An adapter was made for another base model, family, depth or layer shapes."""

    def __init__(self, name: str, problems: list[str]):
        self.name = name
        self.problems = problems
        super().__init__(f"Adapter {name!r} does not fit the loaded model: " + " ".join(problems))


class AdapterExistsError(AdapterError):
    """An adapter of that name already exists and overwrite was not asked for."""


class InvalidAdapterNameError(AdapterError):
    """An adapter name is not a plain folder name (1-64 letters, digits, '_', '-', '.'; no paths, no control characters)."""


class AdapterConfigError(AdapterCorruptError):
    """An adapter's ``adapter_config.json`` holds a value of the wrong type or shape, or a setting Adaptrix refuses."""


class AdapterUnsupportedError(AdapterConfigError, AdapterIncompatibleError):
    """An adapter asks for a LoRA option Adaptrix refuses: one that would change the shared base model
    (layer replication, modules to save, trainable tokens, base-rewriting initialisations) or a LoRA
    variant it does not serve. Both a config error (the file names it) and an incompatibility."""

    def __init__(self, message: str, name: str = "", problems: list[str] | None = None):
        self.name = name
        self.problems = problems or [message]
        AdapterError.__init__(self, message)


class AdapterMetadataError(AdapterError):
    """Adapter metadata (``adaptrix.json`` fields, or metadata passed to save/import) has a value of the wrong type."""


class AdapterExportError(AdapterError):
    """An export destination would overwrite the adapter store or the adapter's own files; nothing was written."""


class AdapterStoreError(AdapterError):
    """The adapter store (or an export destination) could not be read or written: permissions, disk, not a folder."""


class TrainingDataError(AdaptrixError, ValueError):
    """Training data is missing, malformed or too small."""


class DocumentError(AdaptrixError, ValueError):
    """A document could not be read: missing, unreadable, an unsupported format, or holding no text."""


class DocumentNotFoundError(DocumentError, LookupError):
    """No document of that id (or source path) is in the retrieval index."""


class IndexCorruptError(AdaptrixError, RuntimeError):
    """The retrieval index on disk is damaged or its files disagree; they are reported, never modified."""


class IndexAccessError(AdaptrixError, OSError):
    """The retrieval index folder could not be read or written (locked by another writer past the wait,
    read-only, disk full); the committed index is left as it was."""


class QueueFullError(AdaptrixError, RuntimeError):
    """The scheduler's request queue holds its maximum number of waiting requests; retry later."""


class SchedulerStoppedError(AdaptrixError, RuntimeError):
    """The scheduler is stopping or stopped, so it accepts no new requests (or dropped a waiting one)."""


class RequestCancelledError(AdaptrixError, RuntimeError):
    """The request was cancelled (its client went away) before it finished, so it has no result."""


class MonitoringError(AdaptrixError, ValueError):
    """The request log cannot be opened or read (not an Adaptrix log, a newer schema, unwritable), or a
    monitoring argument (a ``--since`` window, a record field) is bad."""


class OptionalDependencyError(AdaptrixError, ImportError):
    """A feature needs an optional extra that is not installed; the message names the pip command."""


class RemoteBackendError(AdaptrixError, RuntimeError):
    """A remote model server (vLLM or any OpenAI-compatible server, ``backend="remote"``) refused a request.

    ``status`` is the upstream's HTTP status (None when no answer came), ``upstream_message`` the
    message of its error body, ``error_type`` and ``code`` its error ``type`` and ``code`` fields, and
    ``url`` the request's URL. The message names the URL, the status and the upstream's own words.
    """

    def __init__(self, message: str, *, url: str = "", status: int | None = None, upstream_message: str = "",
                 error_type: str | None = None, code: Any = None):
        self.url = url
        self.status = status
        self.upstream_message = upstream_message
        self.error_type = error_type
        self.code = code
        super().__init__(message)


class UpstreamUnavailableError(RemoteBackendError):
    """The remote model server could not be reached (refused, unknown host, timed out) or stayed
    overloaded (429 / 503) through every retry."""
