"""Turning caller arguments into validated sampling parameters and chat messages; stop strings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from adaptrix_core.config import GenerationSettings
from adaptrix_core.errors import InvalidGenerationParameterError, InvalidPromptError
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.types import SamplingParams

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "task_type", "enable_thinking",
                   "ignore_eos")
ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 16
#: Temperatures below this are treated as 0 (greedy), as vLLM does (its ``_SAMPLING_EPS``): dividing
#: logits by a denormal such as 5e-324 overflows to inf and sampling then fails on NaN probabilities.
GREEDY_TEMPERATURE = 1e-5
MAX_TEMPERATURE = 100.0
#: ``torch.manual_seed`` takes a 64-bit value; seeds are the non-negative half of it.
MAX_SEED = 2**63 - 1
#: Far above any context window (answers are clamped to the room the prompt leaves); keeps counts in int32.
MAX_NEW_TOKENS = 2**31 - 1


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InvalidGenerationParameterError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {_shown(value)}."
        )
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            raise InvalidGenerationParameterError(
                f"{name} must be finite, got an integer of {value.bit_length()} bits."
            ) from None
        if not math.isfinite(value):
            raise InvalidGenerationParameterError(f"{name} must be finite, got {value!r}.")
    return value


def _shown(value: Any) -> str:
    """``repr`` of a value for a message, cut short (a huge int or a long list stays readable)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({type(value).__name__})"


def check_text(what: str, text: str, error: type[Exception] = InvalidPromptError) -> str:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates, e.g. from undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{what} holds a character that cannot be encoded as UTF-8: {text[exc.start]!r} at position {exc.start} "
            "(a lone surrogate, usually from bytes that were not valid UTF-8). Remove it, or decode the input "
            "with errors='replace'."
        ) from None
    return text


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, (list, tuple)) or not all(isinstance(s, str) and s for s in values):
        raise InvalidGenerationParameterError(f"stop must be a non-empty string or a list of them, got {_shown(stop)}.")
    if len(values) > MAX_STOP_STRINGS:
        raise InvalidGenerationParameterError(f"At most {MAX_STOP_STRINGS} stop strings are allowed, got {len(values)}.")
    for index, value in enumerate(values):
        check_text(f"stop string {index}", value, InvalidGenerationParameterError)
    return tuple(dict.fromkeys(values))


def _flag(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidGenerationParameterError(f"{name} must be true or false, got {_shown(value)}.")
    return value


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
    """Merge, lowest first: family defaults, configured overrides, the task preset, explicit arguments.

    Every value is checked (type and range; unencodable stop strings are refused) and a wrong one
    raises ``InvalidGenerationParameterError`` naming it. A temperature below ``GREEDY_TEMPERATURE``
    (1e-5, vLLM's rule) is treated as 0, i.e. greedy decoding: logits divided by a tiny positive
    temperature overflow and the sampling probabilities become NaN. Seeds run from 0 to 2**63 - 1.
    """
    values: dict[str, Any] = {
        "max_new_tokens": family.generation.max_new_tokens,
        "temperature": family.generation.temperature,
        "top_p": family.generation.top_p,
        "seed": None,
    }
    values.update({k: v for k, v in overrides.model_dump().items() if v is not None})
    task_type = gen.get("task_type")
    if task_type is not None:
        if not isinstance(task_type, str):
            raise InvalidGenerationParameterError(
                f"task_type must be a string ({', '.join(family.task_presets)}), "
                f"got {type(task_type).__name__} {_shown(task_type)}."
            )
        if task_type not in family.task_presets:
            raise InvalidGenerationParameterError(
                f"Unknown task_type {_shown(task_type)}. Known for the {family.name} family: {', '.join(family.task_presets)}."
            )
        values.update(family.task_presets[task_type])
    values.update({k: gen[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if gen.get(k) is not None})

    max_new_tokens = _number("max_new_tokens", values["max_new_tokens"], int)
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidGenerationParameterError(
            f"max_new_tokens must be at least 1 and at most {MAX_NEW_TOKENS} (answers stop at the context window "
            f"anyway), got {_shown(max_new_tokens)}."
        )
    temperature = _number("temperature", values["temperature"], float)
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidGenerationParameterError(f"temperature must be between 0 (greedy) and 100, got {temperature}.")
    if temperature < GREEDY_TEMPERATURE:
        temperature = 0.0
    top_p = _number("top_p", values["top_p"], float)
    if not 0 < top_p <= 1:
        raise InvalidGenerationParameterError(f"top_p must be in (0, 1], got {top_p}.")
    seed = values["seed"]
    if seed is not None:
        _number("seed", seed, int)
        if not 0 <= seed <= MAX_SEED:
            raise InvalidGenerationParameterError(
                f"seed must be an integer from 0 to 2**63 - 1 ({MAX_SEED}), got {_shown(seed)}."
            )
    ignore_eos = bool(_flag("ignore_eos", gen.get("ignore_eos")))
    _flag("enable_thinking", gen.get("enable_thinking"))
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
            raise InvalidPromptError(f"messages[{index}] must be a dict with a string 'content', got {_shown(message)}.")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidPromptError(f"messages[{index}] has role {_shown(role)}; use one of {', '.join(ROLES)}.")
        check_text(f"messages[{index}] ({role})", message["content"])
        checked.append({"role": role, "content": message["content"]})
    if checked[-1]["role"] == "assistant":
        raise InvalidPromptError("The last message must be from the user (or system), not the assistant.")
    return checked


def check_prompt(prompt: Any) -> str:
    """A prompt must be a non-empty string that can be encoded as UTF-8."""
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"The prompt must be a string, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidPromptError("The prompt is empty.")
    return check_text("The prompt", prompt)


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Put the configured system prompt (``model.system_prompt``) first unless the messages have their own."""
    if not system_prompt or any(m["role"] == "system" for m in messages):
        return messages
    check_text("The configured system prompt (model.system_prompt)", system_prompt)
    return [{"role": "system", "content": system_prompt}, *messages]


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
