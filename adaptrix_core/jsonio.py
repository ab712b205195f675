"""The one atomic JSON write and the one JSONL reader that every part of Adaptrix uses."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file renamed into place.

    A reader sees the old file or the new one, never half of one. ``mode`` is applied because
    temporary files start private, while adapters, router state and CLI state are shared like any folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False, default=str)
            out.write("\n")
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path, error: type[Exception], what: str = "data file") -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for each non-blank line of a JSONL file; problems raise ``error``
    with the file name and line number."""
    if not path.is_file():
        raise error(f"The {what} {str(path)!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{path.name} line {number} is not valid JSON: {exc.msg}.") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path.name} is not UTF-8 text ({exc.reason}).") from None
    except OSError as exc:
        raise error(f"The {what} {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
