"""Training and evaluation examples: JSONL (or dicts) with prompt/response or chat messages."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptrix_core.errors import TrainingDataError
from adaptrix_core.generation.params import ROLES
from adaptrix_core.jsonio import read_jsonl


@dataclass(frozen=True)
class Example:
    """One supervised example: the conversation before the answer, and the answer."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs ending with a user turn
    response: str

    @property
    def prompt(self) -> str:
        """The last user message (what a router or a reader sees)."""
        return self.messages[-1][1]

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def _example(record: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise TrainingDataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise TrainingDataError(f"{where}: 'messages' must list at least a user and an assistant message.")
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise TrainingDataError(f"{where}: every message needs a role ({', '.join(ROLES)}) and string content.")
        if messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
            raise TrainingDataError(f"{where}: 'messages' must end with a user message and then the assistant's answer.")
        return Example(tuple((m["role"], m["content"]) for m in messages[:-1]), messages[-1]["content"])
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip() or not response.strip():
        raise TrainingDataError(f"{where}: needs non-empty string fields 'prompt' and 'response' (or 'messages').")
    return Example((("user", prompt),), response)


def load_examples(data: str | os.PathLike | Iterable[dict[str, Any]]) -> list[Example]:
    """Read examples from a JSONL file or an iterable of dicts; errors name the line."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        examples = [_example(record, f"{path.name} line {number}")
                    for number, record in read_jsonl(path, TrainingDataError, "training data file")]
    else:
        examples = [_example(record, f"example {index}") for index, record in enumerate(data)]
    if not examples:
        raise TrainingDataError("The training data holds no examples.")
    return examples


def split_examples(examples: Sequence[Example], eval_split: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and keep ``eval_split`` of the examples apart for evaluation."""
    if not 0 <= eval_split < 1:
        raise TrainingDataError(f"eval_split must be in [0, 1), got {eval_split}.")
    order = list(examples)
    random.Random(seed).shuffle(order)
    held_out = int(round(len(order) * eval_split))
    if eval_split > 0 and len(order) >= 2:
        held_out = max(1, held_out)
    if len(order) - held_out < 1:
        raise TrainingDataError(f"Only {len(order)} examples: none would be left to train on.")
    return order[held_out:], order[:held_out]
