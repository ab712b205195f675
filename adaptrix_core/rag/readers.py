"""Document readers: a file (.txt, .md, .pdf, .html) or a raw string becomes plain text with page spans.

A :class:`Document` holds the extracted text, a stable ``doc_id``, the sha256 of its text and its
``pages``: ``(page_number, start, end)`` character spans of the text (PDF pages, 1-based; other
formats have one span with page None). PDF pages are joined with a blank line. HTML keeps the
title and the visible text, drops ``script``/``style``/``template``/``noscript`` and puts block
elements on their own lines. Text files must be UTF-8. Every failure is a :class:`DocumentError`
naming the file and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from adaptrix_core.errors import DocumentError

SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".pdf": "pdf", ".html": "html", ".htm": "html"}
PAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Document:
    """Extracted text of one source, ready to chunk."""

    doc_id: str
    source: str  # absolute path, or "text:<id>" for a raw string
    kind: str  # text, markdown, pdf, html
    text: str
    pages: tuple[tuple[int | None, int, int], ...]

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def path_doc_id(path: str | os.PathLike) -> str:
    """Stable id of a file: a hash of its absolute path (the same file always gets the same id)."""
    return "d" + hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:15]


def text_doc_id(text: str) -> str:
    """Stable id of a raw text document: a hash of the text."""
    return "t" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:15]


def from_text(text: str) -> Document:
    """A raw string as a document."""
    if not isinstance(text, str) or not text.strip():
        raise DocumentError("A text document must be a string holding some non-blank text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DocumentError(f"The text {text[:40]!r}... holds an invalid character (a lone surrogate) at position "
                            f"{exc.start}; decode the text correctly first.") from None
    doc_id = text_doc_id(text)
    return Document(doc_id, f"text:{doc_id}", "text", text, ((None, 0, len(text)),))


def read_file(path: str | os.PathLike) -> Document:
    """Read one file into a Document; DocumentError if it is missing, unreadable, unsupported or empty."""
    file = _resolve(path)
    kind = SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise DocumentError(f"{str(file)!r}: unsupported format {file.suffix or '(no extension)'!r}; "
                            f"supported: {', '.join(sorted(SUFFIXES))}.")
    try:
        if not file.is_file():
            raise DocumentError(f"{str(file)!r} does not exist or is not a file.")
        if kind == "pdf":
            pages = _pdf_pages(file)
        else:
            raw = file.read_bytes()
            try:
                content = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise DocumentError(f"{str(file)!r} is not UTF-8 text (byte {exc.start}); convert it to UTF-8.") from None
            pages = [_html_text(content) if kind == "html" else content]
    except OSError as exc:
        raise DocumentError(f"{str(file)!r} cannot be read: {exc.strerror or exc}.") from None
    text, spans = _join_pages(pages, numbered=kind == "pdf")
    if not text.strip():
        hint = " (a scanned PDF holds images, not text)" if kind == "pdf" else ""
        raise DocumentError(f"{str(file)!r} holds no extractable text{hint}.")
    return Document(path_doc_id(file), str(file), kind, text, spans)


def _resolve(path: str | os.PathLike) -> Path:
    """The absolute, symlink-free path of ``path``; DocumentError for a link loop or an unusable name."""
    loop = f"{str(path)!r} is a symbolic link loop (it leads back to itself); fix or remove the link."
    try:
        resolved = Path(path).expanduser().resolve()
    except RuntimeError:  # pathlib's report of a symbolic link loop
        raise DocumentError(loop) from None
    except (OSError, ValueError) as exc:
        if getattr(exc, "errno", None) == errno.ELOOP:
            raise DocumentError(loop) from None
        raise DocumentError(f"{str(path)!r} is not a usable file name ({getattr(exc, 'strerror', None) or exc}).") from None
    try:
        str(resolved).encode("utf-8")
    except UnicodeEncodeError:
        raise DocumentError(f"{str(path)!r}: the file name is not valid UTF-8; rename the file.") from None
    return resolved


@dataclass
class Walk:
    """Files found under a folder: supported formats, other formats, and (path, reason) failures."""

    supported: list[Path] = field(default_factory=list)
    other: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def walk(folder: Path) -> Walk:
    """Files under ``folder`` (recursively, in name order, hidden entries skipped).

    Links to folders are followed unless they lead back to a folder being walked (or above it): such
    a loop, a link loop, a broken link and a folder that cannot be listed are ``failed`` entries, so
    a walk never runs away (into ``/`` through a link, for example) and never raises.
    """
    found = Walk()
    visited: set[Path] = set()

    def visit(directory: Path, real: Path) -> None:
        visited.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            found.failed.append((str(directory), f"{str(directory)!r} cannot be listed: {exc.strerror or exc}."))
            return
        folders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(directory) / entry.name
            loop = False
            try:
                link, is_dir = entry.is_symlink(), entry.is_dir()
            except OSError:  # a link loop (or an unreachable target): read_file names the problem
                link, is_dir, loop = True, False, True
            if is_dir:
                folders.append((path, link))
            elif loop or path.suffix.lower() in SUFFIXES:
                found.supported.append(path)
            else:
                found.other.append(path)
        for path, link in folders:
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError) as exc:
                found.failed.append((str(path), f"{str(path)!r} is a symbolic link loop or cannot be followed ({exc})."))
                continue
            if link and (target == real or target in real.parents):
                found.failed.append((str(path), f"{str(path)!r} is a symbolic link loop: it leads back to {str(target)!r}, "
                                                "a folder being walked; not followed."))
            elif target not in visited:
                visit(path, target)

    visit(folder, folder.resolve())
    return found


def _join_pages(pages: Iterable[str], numbered: bool) -> tuple[str, tuple[tuple[int | None, int, int], ...]]:
    parts, spans, position = [], [], 0
    for number, page in enumerate(pages, start=1):
        if parts:
            parts.append(PAGE_SEPARATOR)
            position += len(PAGE_SEPARATOR)
        parts.append(page)
        spans.append((number if numbered else None, position, position + len(page)))
        position += len(page)
    return "".join(parts), tuple(spans)


def _pdf_pages(file: Path) -> list[str]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(file)
        if reader.is_encrypted:
            raise DocumentError(f"{str(file)!r} is an encrypted PDF; decrypt it first.")
        return [(page.extract_text() or "").strip() for page in reader.pages]
    except (DocumentError, OSError):
        raise
    except Exception as exc:  # pypdf raises PdfReadError and many built-in types on damaged files
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DocumentError(f"{str(file)!r} is not a readable PDF: {reason}.") from None


_SKIPPED = {"script", "style", "template", "noscript", "svg"}
_BLOCKS = {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "footer", "form",
           "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
           "table", "td", "th", "title", "tr", "ul"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._current: list[str] = []
        self._skip_depth = 0

    def _break(self) -> None:
        line = " ".join("".join(self._current).split())
        if line:
            self.lines.append(line)
        self._current = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIPPED:
            self._skip_depth += 1
        elif tag in _BLOCKS:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._current.append(data)


def _html_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    parser._break()
    return "\n".join(parser.lines)
