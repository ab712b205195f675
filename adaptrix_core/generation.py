"""Turning caller arguments into validated sampling parameters and chat messages; stop strings."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping, Sequence

from adaptrix_core.config import GenerationSettings
from adaptrix_core.errors import InvalidGenerationParameterError, InvalidPromptError
from adaptrix_core.families import ModelFamily
from adaptrix_core.types import SamplingParams

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "task_type", "enable_thinking",
                   "ignore_eos")
ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 16


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InvalidGenerationParameterError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidGenerationParameterError(f"{name} must be finite, got {value!r}.")
    return value


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, (list, tuple)) or not all(isinstance(s, str) and s for s in values):
        raise InvalidGenerationParameterError(f"stop must be a non-empty string or a list of them, got {stop!r}.")
    if len(values) > MAX_STOP_STRINGS:
        raise InvalidGenerationParameterError(f"At most {MAX_STOP_STRINGS} stop strings are allowed, got {len(values)}.")
    return tuple(dict.fromkeys(values))


def check_generation_keys(gen: Mapping[str, Any], extra_keys: Iterable[str] = ()) -> None:
    """Reject unknown keyword arguments with the list of accepted ones."""
    allowed = set(GENERATION_KEYS) | set(extra_keys)
    unknown = sorted(set(gen) - allowed)
    if unknown:
        raise InvalidGenerationParameterError(
            f"Unknown generation argument(s) {', '.join(unknown)}. Accepted: {', '.join(sorted(allowed))}."
        )


def resolve_sampling(
    gen: Mapping[str, Any], family: ModelFamily, overrides: GenerationSettings, max_context: int
) -> SamplingParams:
    """Merge, lowest first: family defaults, configured overrides, the task preset, explicit arguments."""
    values: dict[str, Any] = {
        "max_new_tokens": family.generation.max_new_tokens,
        "temperature": family.generation.temperature,
        "top_p": family.generation.top_p,
        "seed": None,
    }
    values.update({k: v for k, v in overrides.model_dump().items() if v is not None})
    task_type = gen.get("task_type")
    if task_type is not None:
        if task_type not in family.task_presets:
            raise InvalidGenerationParameterError(
                f"Unknown task_type {task_type!r}. Known for the {family.name} family: {', '.join(family.task_presets)}."
            )
        values.update(family.task_presets[task_type])
    values.update({k: gen[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if gen.get(k) is not None})

    max_new_tokens = _number("max_new_tokens", values["max_new_tokens"], int)
    if max_new_tokens < 1:
        raise InvalidGenerationParameterError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    temperature = float(_number("temperature", values["temperature"], float))
    if not 0 <= temperature <= 100:
        raise InvalidGenerationParameterError(f"temperature must be between 0 (greedy) and 100, got {temperature}.")
    top_p = float(_number("top_p", values["top_p"], float))
    if not 0 < top_p <= 1:
        raise InvalidGenerationParameterError(f"top_p must be in (0, 1], got {top_p}.")
    seed = values["seed"]
    if seed is not None:
        _number("seed", seed, int)
    ignore_eos = gen.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise InvalidGenerationParameterError(f"ignore_eos must be true or false, got {ignore_eos!r}.")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=_stop_strings(gen.get("stop")),
        end_tokens=family.chat.end_of_turn_tokens,
        max_context=max_context,
        ignore_eos=ignore_eos,
    )


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Validate OpenAI-style messages: a non-empty list of {role, content} with known roles."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidPromptError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise InvalidPromptError(f"messages[{index}] must be a dict with a string 'content', got {message!r}.")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidPromptError(f"messages[{index}] has role {role!r}; use one of {', '.join(ROLES)}.")
        checked.append({"role": role, "content": message["content"]})
    if checked[-1]["role"] == "assistant":
        raise InvalidPromptError("The last message must be from the user (or system), not the assistant.")
    return checked


def check_prompt(prompt: Any) -> str:
    """A prompt must be a non-empty string."""
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"The prompt must be a string, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidPromptError("The prompt is empty.")
    return prompt


def fold_system_into_user(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """For templates without a system role: prepend system text to the first user message."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system:
        first_user = next((m for m in rest if m["role"] == "user"), None)
        if first_user is None:
            rest.insert(0, {"role": "user", "content": system})
        else:
            first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


def plain_transcript(messages: Sequence[dict[str, str]]) -> str:
    """A prompt for models without a chat template: a single user turn is sent as is."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def trim_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; say whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def stream_until_stop(pieces: Iterator[str], stop: Sequence[str]) -> Iterator[str]:
    """Pass text pieces through, holding back just enough to never emit part of a stop string."""
    if not stop:
        yield from pieces
        return
    hold = max(len(s) for s in stop) - 1
    buffer = ""
    try:
        for piece in pieces:
            buffer += piece
            kept, found = trim_at_stop(buffer, stop)
            if found:
                if kept:
                    yield kept
                return
            if len(buffer) > hold:
                cut = len(buffer) - hold
                yield buffer[:cut]
                buffer = buffer[cut:]
        if buffer:
            yield buffer
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
