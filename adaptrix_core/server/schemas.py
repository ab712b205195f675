"""Request bodies of the native and OpenAI-compatible endpoints (pydantic; failures become 400s).

Native bodies forbid unknown fields (a misspelt option is an error, not silently ignored). OpenAI
bodies ignore fields they do not know, as clients send many optional ones, but refuse the features
Adaptrix does not implement (n > 1, logprobs, tools, penalties, ...) when a client asks for them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Stop = str | list[str] | None
AdapterSpec = str | list[str] | dict[str, float] | None


class _Native(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationFields(BaseModel):
    """Sampling options shared by every generation endpoint; None keeps the engine's defaults."""

    temperature: float | None = Field(None, description="0 for greedy decoding.")
    top_p: float | None = Field(None, description="Nucleus sampling mass in (0, 1].")
    seed: int | None = Field(None, description="Seed that makes sampling reproducible.")
    stop: Stop = Field(None, description="Stop string or list of them (not part of the answer).")


class QueryRequest(GenerationFields, _Native):
    """``POST /query``: the engine's ``query()`` over HTTP."""

    prompt: str = Field(description="The question or instruction.")
    adapter: AdapterSpec = Field(None, description="Adapter name, {name: weight}, 'auto' (routed), or null (base).")
    use_rag: bool = Field(False, description="Answer from the document index, citing sources.")
    top_k: int | None = Field(None, description="Passages retrieved with use_rag.")
    min_score: float | None = Field(None, description="Minimum passage similarity with use_rag.")
    max_new_tokens: int | None = Field(None, description="Upper bound on generated tokens.")
    task_type: str | None = Field(None, description="Preset: general, code, math, creative.")
    ignore_eos: bool | None = Field(None, description="Generate exactly max_new_tokens tokens (benchmarks).")


class _OpenAI(GenerationFields):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The base model id, an adapter name, or 'auto'.")
    max_tokens: int | None = Field(None, description="Upper bound on generated tokens.")
    stream: bool = Field(False, description="Send server-sent events as tokens are generated.")
    stream_options: dict[str, Any] | None = Field(None, description="{'include_usage': true} adds a usage chunk.")
    n: int | None = Field(1, description="Choices per request; only 1 is supported.")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    use_rag: bool = Field(False, description="Adaptrix extension: answer from the document index.")
    rag_top_k: int | None = Field(None, description="Adaptrix extension: passages retrieved with use_rag.")
    ignore_eos: bool | None = Field(None, description="vLLM extension: generate exactly max_tokens tokens.")
    adapter: dict[str, float] | None = Field(
        None, description="Adaptrix extension: a weighted adapter mix {name: weight} (overrides model's adapter); "
        "the remote backend sends it when its upstream is an Adaptrix server.")

    def unsupported(self) -> list[tuple[str, str]]:
        """(param, reason) for each requested feature Adaptrix does not implement."""
        problems = []
        if self.n not in (None, 1):
            problems.append(("n", f"n={self.n} is not supported; send one request per choice (n=1)."))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                problems.append((name, f"{name} is not supported; leave it unset or 0."))
        if self.logit_bias:
            problems.append(("logit_bias", "logit_bias is not supported."))
        return problems


class ChatCompletionRequest(_OpenAI):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(description="OpenAI-style messages; the last one is the user's.")
    max_completion_tokens: int | None = Field(None, description="Same as max_tokens (newer name).")
    logprobs: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.logprobs:
            problems.append(("logprobs", "logprobs are not supported."))
        if self.tools:
            problems.append(("tools", "tools (function calling) are not supported."))
        if self.response_format and self.response_format.get("type", "text") != "text":
            problems.append(("response_format", "only response_format {'type': 'text'} is supported."))
        return problems


class CompletionRequest(_OpenAI):
    """``POST /v1/completions``."""

    prompt: str | list[str] = Field(description="The prompt (a string, or a list holding one string).")
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.echo:
            problems.append(("echo", "echo is not supported."))
        if self.suffix:
            problems.append(("suffix", "suffix (insertion) is not supported."))
        if self.logprobs:
            problems.append(("logprobs", "logprobs are not supported."))
        if self.best_of not in (None, 1):
            problems.append(("best_of", "best_of is not supported (1 only)."))
        return problems


class LoraAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` / ``unload_lora_adapter`` body."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(description="Adapter name in the store.")
    lora_path: str | None = Field(None, description="PEFT folder to import under lora_name (load only).")
