"""Protocols that plugins implement: the model backend and the adapter router.

They are structural (``typing.Protocol``): a plugin's class needs the methods, not a base class.
Nothing here assumes torch: an ONNX Runtime backend implements the same surface.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from adaptrix_core.config import ModelSettings
    from adaptrix_core.models.families import ModelFamily
    from adaptrix_core.models.source import ModelSource
    from adaptrix_core.types import Completion, ModelDescription, SamplingParams


class Capability:
    """Names of what a backend can do beyond plain text generation (``BaseModelInterface.capabilities``).

    The engine checks a capability before using it and raises ``BackendCapabilityError`` naming the
    backend and the capability when it is missing, so a backend without torch modules (ONNX, a remote
    HTTP server) plugs in and the engine degrades clearly.
    """

    LORA = "lora"
    """Serves LoRA adapters: implements :class:`AdapterBackend` (inject, remove, shapes)."""
    LORA_COMPOSITION = "lora_composition"
    """``compose_lora``: weighted mixes of loaded adapters."""
    MIXED_ADAPTER_BATCHES = "mixed_adapter_batches"
    """One ``generate`` batch may use a different adapter per prompt (else the engine groups by adapter)."""
    TRAINING = "training"
    """``train_lora`` and ``save_lora``: adapters are trained and saved on this backend."""
    STREAMING = "streaming"
    """``stream`` yields text as it is generated (else the engine yields the whole answer once)."""
    STEP_BATCHING = "step_batching"
    """Iteration-level batching for the server's scheduler (requests join and leave a running batch)."""
    MODULE_TREE = "module_tree"
    """``module_names`` lists a real module tree and ``layers_path`` names its block list."""
    CONCURRENT_REQUESTS = "concurrent_requests"
    """``generate`` may run in several threads at once (a remote server): the scheduler overlaps requests."""


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

    capabilities: frozenset[str]
    """The :class:`Capability` names this backend supports (may grow once ``load`` has run)."""

    layers_path: str | None
    """Dotted path of the transformer block list in the module tree (None without a module tree)."""

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

    # Optional: ``configure(config: AdaptrixConfig) -> None`` is called before ``load`` when the backend
    # has it, so that it reads its own ``plugins.<name>`` section (and anything else it needs).

    def memory_report(self) -> dict[str, int]:
        """Bytes the backend holds, by kind (e.g. ``{"weights": ..., "adapters": ...}``); may be empty."""

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
        extend base modules (see ``adaptrix_core.adapters.lora_options``); on any failure the model is left
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


# -- iteration-level (continuous) batching -------------------------------------------------------

@dataclass
class StepRow:
    """One request joining a running batch: what ``StepBatch.add`` needs to prefill it.

    ``key`` identifies the row in every later call and output; ``token_ids`` is the prompt as
    ``StepBatching.encode_prompt`` returned it; ``adapter`` names the loaded adapter the row runs
    with (None: the base model), re-resolved on every step so that adapters may be loaded, unloaded
    or evicted between steps without touching the rows that do not use them.
    """

    key: str
    token_ids: list[int]
    params: SamplingParams
    adapter: str | None = None


@dataclass
class StepOutput:
    """A row's state after one forward pass.

    ``text`` is the whole answer decoded so far (special tokens and the final end-of-turn token
    left out; an incomplete UTF-8 tail may show as U+FFFD until the next token). ``finish_reason``
    is None while the row continues, ``"stop"`` when it produced an end-of-sequence/end-of-turn
    token, ``"length"`` when it reached ``max_new_tokens`` or the context window; a finished row
    has already left the batch. Stop strings are the caller's business (``StepBatch.remove``).
    """

    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


@runtime_checkable
class StepBatch(Protocol):
    """A running batch whose rows decode in lock step and join or leave between steps.

    Every method runs one piece of tensor work and returns; the caller (the scheduler's single
    decode thread) holds the engine lock around each call, so nothing else touches the model during
    a step, and other engine calls (loading an adapter) may run between steps. A row's outputs never
    depend on its batch mates: greedy rows give exactly the tokens a single-request ``generate``
    gives, and a sampled row draws from its own generator seeded by ``params.seed``.
    """

    def add(self, rows: Sequence[StepRow]) -> list[StepOutput]:
        """Prefill ``rows`` together, sample each one's first token and merge them into the batch.

        Returns one output per new row (those already finished after one token have left again).
        On an error the running rows are untouched and none of ``rows`` joined.
        """

    def step(self) -> list[StepOutput]:
        """Decode one token for every row; returns one output per row (finished rows leave)."""

    def remove(self, keys: Iterable[str]) -> None:
        """Take rows out of the batch (cancelled, stopped by a stop string); unknown keys are ignored."""

    def keys(self) -> list[str]:
        """The keys of the rows in the batch, in batch order."""

    def __len__(self) -> int:
        """Number of rows in the batch."""


@runtime_checkable
class StepBatching(Protocol):
    """Backend capability: iteration-level batching across requests and adapters.

    A backend with it lets the server's scheduler run concurrent requests as one batch in which
    requests join at step boundaries and finished rows leave, the way text-generation-inference
    batched plain transformers models. Backends without it (ONNX, remote) are driven one request at
    a time through ``BaseModelInterface.generate``.
    """

    def encode_prompt(self, prompt: str, *, templated: bool) -> list[int]:
        """Token ids of a rendered prompt exactly as ``generate`` would feed them (BOS added unless templated)."""

    def new_step_batch(self) -> StepBatch:
        """An empty batch bound to the loaded model."""
