"""Value types passed between the engine, backends and callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Fully resolved generation settings handed to a backend (no None left).

    ``temperature == 0`` means greedy decoding. ``stop`` holds stop strings (generation ends at the
    first, which is not part of the returned text); ``end_tokens`` are extra token strings that end
    a turn (the family's end-of-turn tokens). ``max_context`` is the window the prompt must fit in.
    ``ignore_eos`` makes every answer exactly ``max_new_tokens`` tokens long (end-of-sequence tokens
    are suppressed; stop strings still apply), for throughput measurements.
    """

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    end_tokens: tuple[str, ...]
    max_context: int
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One generated answer as a backend returns it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class ModelDescription:
    """What a backend reports about the model it loaded (read from the HF config)."""

    model_type: str | None
    architectures: tuple[str, ...]
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None
    dtype: str
    device: str
    num_parameters: int | None = None
    has_chat_template: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class QueryResult(BaseModel):
    """The answer to one prompt and how it was produced."""

    text: str = Field(description="Generated text (stop strings and end-of-turn tokens removed).")
    model_id: str = Field(description="The model id the engine was created with.")
    family: str = Field(description="Detected (or forced) model family name.")
    backend: str = Field("hf", description="Backend that generated the text.")
    adapters: list[str] = Field(default_factory=list, description="Adapters active for this answer.")
    adapter_weights: dict[str, float] = Field(default_factory=dict, description="Composition weight of each adapter.")
    routing: dict[str, Any] | None = Field(None, description="Router decision, when routing chose the adapters.")
    sources: list[dict[str, Any]] = Field(default_factory=list, description="Retrieved passages used (RAG).")
    latency_ms: float = Field(description="Wall-clock time of the whole call, milliseconds.")
    prompt_tokens: int = Field(description="Tokens in the prompt after the chat template.")
    completion_tokens: int = Field(description="Tokens generated.")
    finish_reason: FinishReason = Field(description="'stop' (end of turn or stop string) or 'length'.")
    generation: dict[str, Any] = Field(default_factory=dict, description="The resolved generation settings.")


class CompatibilityReport(BaseModel):
    """Whether an adapter configuration fits the loaded model, and if not, why."""

    compatible: bool = Field(description="True when no problem was found.")
    problems: list[str] = Field(default_factory=list, description="Plain-language reasons it does not fit.")
    warnings: list[str] = Field(default_factory=list, description="Things worth knowing that do not block loading.")
    family: str = Field(description="The engine's model family.")
    num_layers: int = Field(description="Transformer blocks in the engine's model.")
