"""What ``add_documents`` and ``retrieve`` accept, checked before any file is read.

:func:`classify` turns the argument of ``add_documents`` into ``("path", Path)`` and ``("text",
str)`` items or raises :class:`DocumentError`: None, an empty list, an empty or blank string,
``Path("")`` (which Python turns into ``Path(".")``, the working folder), bytes, numbers and other
objects, a text that is not valid Unicode, and the file-system root are refused as a whole, so a
mistake never walks the working folder or ``/``. :func:`expand` then lists the files of the
folders (see :func:`adaptrix_core.rag.readers.walk`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adaptrix_core.errors import DocumentError, InvalidPromptError
from adaptrix_core.rag.readers import SUFFIXES, walk

MAX_PATH_CHARS = 4096


def classify(items: Any) -> list[tuple[str, Any]]:
    """``("path", Path)`` / ``("text", str)`` for each input item; DocumentError for an unusable input."""
    if items is None:
        raise DocumentError("add_documents() needs a file, a folder, a text or a list of them; got None.")
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    elif isinstance(items, (bytes, bytearray, memoryview, Mapping)) or not isinstance(items, Iterable):
        raise DocumentError(f"add_documents() takes a path, a text string or a list of them, got "
                            f"{type(items).__name__}{_bytes_hint(items)}.")
    items = list(items)
    if not items:
        raise DocumentError("add_documents() got an empty list: there is nothing to add.")
    classified = []
    for position, item in enumerate(items):
        where = f"Item {position} of add_documents()" if len(items) > 1 else "The item given to add_documents()"
        classified.append(_classify_one(item, where))
    return classified


def _classify_one(item: Any, where: str) -> tuple[str, Any]:
    if isinstance(item, os.PathLike):
        try:
            name = os.fspath(item)
        except TypeError as exc:
            raise DocumentError(f"{where} is a path-like object that gives no path ({exc}).") from None
        if not isinstance(name, str):
            raise DocumentError(f"{where} is a bytes path {item!r}; pass it as a str or Path.")
        if name in ("", "."):
            raise DocumentError(f"{where} is {item!r}, an empty path (Python reads Path('') as the working folder); "
                                "name the folder to add, e.g. Path.cwd().")
        return _path_item(name, where)
    if isinstance(item, str):
        if not item.strip():
            raise DocumentError(f"{where} is an empty or blank string; pass a file, a folder or a text with some words.")
        if _looks_like_path(item):
            return _path_item(item, where)
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DocumentError(f"{where} is a text holding an invalid character (a lone surrogate) at position "
                                f"{exc.start}; decode the text correctly first.") from None
        return "text", item
    raise DocumentError(f"{where} is a {type(item).__name__} ({repr(item)[:60]}); expected a path (str or Path) or a "
                        f"text string{_bytes_hint(item)}.")


def _path_item(name: str, where: str) -> tuple[str, Path]:
    if "\x00" in name:
        raise DocumentError(f"{where} is a path holding a NUL character: {name[:80]!r}.")
    path = _expanded(Path(name))
    if _is_dir(path):
        try:
            real = path.resolve()
        except (OSError, RuntimeError):
            real = path
        if real == Path(real.anchor):
            raise DocumentError(f"{where} is the file-system root {name!r}; name the folders that hold your documents.")
    return "path", path


def expand(classified: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], list[str], list[tuple[str, str]]]:
    """(items with folders replaced by their supported files, skipped files, (path, reason) failures)."""
    expanded, skipped, failed = [], [], []
    for kind, item in classified:
        if kind == "path" and _is_dir(item):
            found = walk(item)
            expanded.extend(("path", path) for path in found.supported)
            skipped.extend(str(path) for path in found.other)
            failed.extend(found.failed)
        else:
            expanded.append((kind, item))
    return expanded, skipped, failed


def check_text(value: Any, what: str) -> str:
    """``value`` if it is a non-blank, valid Unicode string; InvalidPromptError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidPromptError(f"{what} must be a non-empty string, got {repr(value)[:60]}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPromptError(f"{what} holds an invalid character (a lone surrogate) at position {exc.start}.") from None
    return value


def _looks_like_path(text: str) -> bool:
    """An existing path, or a one-line string ending in a supported extension, or one without spaces ending in any."""
    if "\n" in text or "\x00" in text or len(text) > MAX_PATH_CHARS:
        return False
    try:
        if _expanded(Path(text)).exists():
            return True
    except (OSError, ValueError):
        return False
    suffix = Path(text).suffix.lower()
    return bool(suffix) and (suffix in SUFFIXES or not any(c.isspace() for c in text))


def _expanded(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # no home folder to expand "~" to: keep the name as given
        return path


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False  # read_file reports why the path cannot be used


def _bytes_hint(value: Any) -> str:
    return " (decode bytes to str for a text, or wrap a path in Path)" if isinstance(value, (bytes, bytearray)) else ""
