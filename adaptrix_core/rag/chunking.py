"""Token-window chunking with character offsets, page by page.

Each page span of a :class:`~adaptrix_core.rag.readers.Document` is tokenized with the embedding
model's (fast) tokenizer and its offsets mapping, then cut into windows of ``size`` tokens that
start every ``size - overlap`` tokens; the last window ends at the page's last token. A chunk's
text is the exact slice ``document.text[start:end]`` between its first token's start and its last
token's end, so offsets always point back into the extracted text. Chunks never cross a page, so
every PDF chunk has one page number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adaptrix_core.errors import ConfigError
from adaptrix_core.rag.readers import Document


@dataclass(frozen=True)
class Chunk:
    """One passage of a document: its position in the document and in the extracted text."""

    ordinal: int
    page: int | None
    start: int
    end: int
    text: str
    tokens: int


def chunk_document(document: Document, tokenizer: Any, size: int, overlap: int) -> list[Chunk]:
    """Cut ``document`` into chunks of at most ``size`` tokens, consecutive ones sharing ``overlap``."""
    if size < 1 or not 0 <= overlap < size:
        raise ConfigError(f"Chunking needs chunk_size >= 1 and 0 <= chunk_overlap < chunk_size, got {size} / {overlap}.")
    chunks: list[Chunk] = []
    step = size - overlap
    for page, page_start, page_end in document.pages:
        segment = document.text[page_start:page_end]
        offsets = [(a, b) for a, b in _offsets(tokenizer, segment) if b > a]
        first = 0
        while first < len(offsets):
            last = min(first + size, len(offsets))
            start, end = page_start + offsets[first][0], page_start + offsets[last - 1][1]
            chunks.append(Chunk(len(chunks), page, start, end, document.text[start:end], last - first))
            if last == len(offsets):
                break
            first += step
    return chunks


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    if not text.strip():
        return []
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("Chunking needs a fast (Rust) tokenizer with offsets; the embedding model's is not one.")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [tuple(pair) for pair in encoded["offset_mapping"]]
