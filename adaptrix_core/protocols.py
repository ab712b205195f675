"""Protocols that plugins implement: the model backend and the adapter router.

They are structural (``typing.Protocol``): a plugin's class needs the methods, not a base class.
Nothing here assumes torch: an ONNX Runtime backend implements the same surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from adaptrix_core.config import ModelSettings
    from adaptrix_core.families import ModelFamily
    from adaptrix_core.model_source import ModelSource
    from adaptrix_core.types import Completion, ModelDescription, SamplingParams


@runtime_checkable
class BaseModelInterface(Protocol):
    """A backend: loads one model and generates text from rendered prompts.

    The engine owns everything above the text level (chat messages, family defaults, presets,
    conversation memory, stop-string trimming of streams); a backend owns tokenization, the context
    check and decoding.

    Lifecycle: ``load`` once, then ``bind_family`` once the engine has detected the family, then any
    number of ``render_chat`` / ``generate`` / ``stream`` calls, then ``close``. Calls arrive one at a
    time (the engine serialises them).
    """

    name: str
    """Registered backend name, e.g. ``"hf"``."""

    def load(self, source: ModelSource, settings: ModelSettings, cache_dir: Path) -> ModelDescription:
        """Load tokenizer and weights from ``source`` on ``settings.device``/``dtype``; describe the model.

        Raises ``ModelLoadError`` when the files cannot be read and ``DeviceNotAvailableError`` when
        the device is missing. ``cache_dir`` may hold derived files (a converted GGUF, an ONNX export).
        """

    def bind_family(self, family: ModelFamily) -> None:
        """Take the detected family (end-of-turn tokens, layer path) into account from now on."""

    def render_chat(self, messages: Sequence[Mapping[str, str]], template_kwargs: Mapping[str, Any]) -> str:
        """Render OpenAI-style ``messages`` with the model's chat template, ready for generation."""

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (no special tokens added)."""

    def generate(self, prompts: Sequence[str], params: SamplingParams, *, templated: bool,
                 adapters: Sequence[str | None] | None = None) -> list[Completion]:
        """Generate one completion per prompt, as one batch.

        ``templated`` says the prompts were rendered by ``render_chat`` (so no BOS is added again).
        ``adapters`` names, per prompt, the loaded adapter to use (None: the base model); a backend
        without adapter support accepts only None. Raises ``ContextOverflowError`` when a prompt
        leaves no room in ``params.max_context``; a smaller ``max_new_tokens`` is used when only the
        answer would overflow.
        """

    def stream(self, prompt: str, params: SamplingParams, *, templated: bool, adapter: str | None = None) -> Iterator[str]:
        """Yield the completion of one prompt as text pieces; closing the iterator stops decoding."""

    def module_names(self) -> list[str]:
        """Dotted names of the model's submodules (empty when the backend has no module tree)."""

    def close(self) -> None:
        """Release the model's memory; the backend is unusable afterwards."""


@runtime_checkable
class AdapterBackend(Protocol):
    """The extra surface of a backend that serves LoRA adapters (the ``hf`` backend does).

    Adapter names are the store's names; the backend maps them to its own. Every method changes only
    the named adapter: the base weights and the other adapters stay as they are, also on failure.
    """

    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of every layer an adapter may target, by module path."""

    def fingerprint(self) -> dict[str, Any]:
        """What the loaded base model is, independent of its path or id: a JSON-able dict holding at least
        ``format``, ``architecture``, ``num_layers``, ``hidden_size``, ``vocab_size``,
        ``layer_shapes_sha256`` (the targetable layers' shapes) and ``weights_sha256`` (a hash over a few
        fixed base tensors). Deterministic, cheap, and unchanged by loaded adapters. Two fingerprints
        name the same base weights when those keys are equal; adapters record it when saved."""

    def inject_lora(self, name: str, config: Mapping[str, Any], weights_file: Path | None = None) -> int:
        """Add adapter ``name`` from a PEFT config dict (fresh, or with safetensors weights); return its bytes.

        Raises ``AdapterIncompatibleError`` for options or saved tensors that would change, replace or
        extend base modules (see ``adaptrix_core.lora_options``); on any failure the model is left
        exactly as it was."""

    def remove_lora(self, name: str) -> None:
        """Remove adapter ``name`` from the model."""

    def compose_lora(self, name: str, weights: Mapping[str, float]) -> int:
        """Add ``name`` as the weighted sum of loaded adapters' updates; return its bytes."""

    def save_lora(self, name: str, folder: Path, base_model: str) -> Path:
        """Write adapter ``name`` as a standard PEFT folder inside ``folder``; return the folder written."""

    def train_lora(self, name: str, examples: Sequence[tuple[str, str]], options: Mapping[str, Any],
                   progress: Any = None) -> dict[str, Any]:
        """Train adapter ``name`` on (rendered prompt, response) pairs; ``options`` holds epochs,
        learning_rate, batch_size, max_length and seed; ``progress(step, total, loss)`` is called per step."""


@dataclass
class RoutingDecision:
    """What a router chose for one prompt.

    ``selected`` maps adapter names to composition weights (empty: the base model). ``scores`` holds
    every candidate's score, ``confidence`` the router's confidence in the selection (0..1) and
    ``router`` the router's registered name.
    """

    selected: dict[str, float]
    scores: dict[str, float]
    confidence: float
    router: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Router(Protocol):
    """Picks the adapter(s) for a prompt among candidates described by their metadata."""

    name: str

    def route(self, prompt: str, candidates: Sequence[Any]) -> RoutingDecision:
        """Score every candidate adapter for ``prompt`` and select those above threshold (top-k)."""
