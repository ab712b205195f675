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

    def generate(self, prompts: Sequence[str], params: SamplingParams, *, templated: bool) -> list[Completion]:
        """Generate one completion per prompt, as one batch.

        ``templated`` says the prompts were rendered by ``render_chat`` (so no BOS is added again).
        Raises ``ContextOverflowError`` when a prompt leaves no room in ``params.max_context``; a
        smaller ``max_new_tokens`` is used when only the answer would overflow.
        """

    def stream(self, prompt: str, params: SamplingParams, *, templated: bool) -> Iterator[str]:
        """Yield the completion of one prompt as text pieces; closing the iterator stops decoding."""

    def module_names(self) -> list[str]:
        """Dotted names of the model's submodules (empty when the backend has no module tree)."""

    def close(self) -> None:
        """Release the model's memory; the backend is unusable afterwards."""


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
