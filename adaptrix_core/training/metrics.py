"""Scoring generated answers against references: exact match and JSON match."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_SPACES = re.compile(r"\s+")
METRICS = ("auto", "exact_match", "json_match")


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding quotes and a final full stop."""
    text = _SPACES.sub(" ", text.strip().lower())
    return text.strip("\"'").rstrip(".").strip()


def exact_match(prediction: str, reference: str) -> bool:
    """The whole answer equals the reference after ``normalise``."""
    return normalise(prediction) == normalise(reference)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None


def json_match(prediction: str, reference: str) -> bool:
    """The answer is JSON equal to the reference's JSON (key order and spacing do not matter)."""
    expected = _parse_json(reference)
    return expected is not None and _parse_json(prediction) == expected


def metric_for(name: str, references: list[str]) -> tuple[str, Callable[[str, str], bool]]:
    """Resolve ``auto`` to json_match when every reference is a JSON object, else exact_match."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; use one of {', '.join(METRICS)}.")
    if name == "auto":
        name = "json_match" if references and all(isinstance(_parse_json(r), dict) for r in references) else "exact_match"
    return name, (json_match if name == "json_match" else exact_match)
