"""Reading adapter files defensively: regular files only, bounded sizes, strict JSON.

Every failure is an ``AdapterCorruptError`` (or a subclass chosen by the caller) whose message names
the file; nothing here writes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from adaptrix_core.errors import AdapterCorruptError

MAX_JSON_FILE = 16 * 2**20  # adapter_config.json and adaptrix.json are a few KiB; anything this big is not one


def open_regular(path: Path, what: str):
    """Open ``path`` for binary reading if it is a regular file (following symlinks); return (file, size).

    FIFOs, devices and folders are refused before anything is read: opening is non-blocking, so a FIFO
    planted in an adapter folder cannot hang a listing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise AdapterCorruptError(f"{what} is missing ({path.name}).") from None
    except OSError as exc:
        raise AdapterCorruptError(f"{what} ({path.name}) cannot be opened: {exc.strerror or exc}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AdapterCorruptError(f"{what} ({path.name}) is not a regular file.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, what: str, limit: int = MAX_JSON_FILE) -> bytes:
    """The bytes of regular file ``path``, refusing files over ``limit`` bytes."""
    handle, size = open_regular(path, what)
    with handle:
        if size > limit:
            raise AdapterCorruptError(f"{what} ({path.name}) is {size} bytes, more than the {limit} allowed.")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise AdapterCorruptError(f"{what} ({path.name}) cannot be read: {exc.strerror or exc}.") from None
    if len(data) > limit:
        raise AdapterCorruptError(f"{what} ({path.name}) is more than the {limit} bytes allowed.")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_object(raw: bytes, what: str, error: type[AdapterCorruptError] = AdapterCorruptError) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object with stricter rules than ``json.loads``.

    Refused: bytes that are not UTF-8, NaN/Infinity, keys repeated within an object (readers disagree
    on which copy wins), strings that cannot be written back as UTF-8 (lone surrogates), nesting too
    deep for the parser, numbers too long to convert, and any top-level value other than an object.
    """
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}.") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a valid file.") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, numbers over the digit limit
        raise error(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, not {type(data).__name__}.")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} holds a string with an unpaired surrogate escape (\\ud800-\\udfff).") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a valid file.") from None
    return data


def read_json_object(path: Path, what: str, error: type[AdapterCorruptError] = AdapterCorruptError) -> dict[str, Any]:
    """Read and strictly parse the JSON object in regular file ``path``."""
    return loads_object(read_regular(path, what), f"{what} ({path.name})", error)
