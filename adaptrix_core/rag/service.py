"""``DocumentIndex``: the document index service (ingest, list, remove, retrieve, the RAG prompt).

Documents are read (:mod:`adaptrix_core.rag.readers`), cut into token windows of the shared
embedder's tokenizer (:mod:`adaptrix_core.rag.chunking`), embedded in batches and committed
atomically to ``rag.data_dir`` (:mod:`adaptrix_core.rag.store`). Reading and embedding run outside
the lock; only the commit and searches take it. It needs the embedding model, never the language
model: ``adaptrix index ...`` builds it alone.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaptrix_core.config import RagSettings
from adaptrix_core.errors import ConfigError, DocumentError, DocumentNotFoundError, InvalidPromptError

IngestProgress = Callable[[int, int], None]
"""``progress(done, total)``: chunks embedded so far out of those this call embeds."""

BUNDLED_EMBEDDER = "all-MiniLM-L6-v2 (bundled)"


@dataclass
class IngestReport:
    """What ``add_documents`` did: document ids added, replaced (changed) or unchanged, and failures."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path or text excerpt, reason)
    skipped: list[str] = field(default_factory=list)  # files of unsupported formats met while walking folders
    sources: dict[str, str] = field(default_factory=dict)  # doc id -> source path (or text:<id>)
    chunks_added: int = 0
    generation: int | None = None  # index generation committed by this call (None: nothing written)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DocumentIndex:
    """The document index in ``settings.data_dir``, embedded with the shared sentence embedder.

    ``embedder`` returns the embedding model (loaded on first use); ``embedding_model`` names it in
    the index (None: the bundled all-MiniLM-L6-v2), so that an index is never searched with another
    model's vectors. ``lock`` serialises commits and searches (the engine passes its own).
    """

    def __init__(self, settings: RagSettings, embedder: Callable[[], Any], embedding_model: str | None = None,
                 lock: Any = None):
        self.settings = settings
        self._embedder = embedder
        self._embedding_model = embedding_model
        self._lock = lock if lock is not None else threading.RLock()
        self._rag_store = None
        self._rag_store_key: tuple | None = None

    @property
    def embedder(self) -> Any:
        """The shared sentence-embedding model."""
        return self._embedder()

    def _store(self):
        from adaptrix_core.rag.store import IndexStore

        s = self.settings
        key = (str(Path(s.data_dir).expanduser().resolve()), s.index_type, s.nprobe, s.ef_search)
        if self._rag_store is None or self._rag_store_key != key:
            self._rag_store, self._rag_store_key = IndexStore(key[0], s.index_type, s.nprobe, s.ef_search), key
        return self._rag_store

    # -- ingestion -----------------------------------------------------------------------------
    def add_documents(self, paths_or_texts: Any, progress: IngestProgress | None = None) -> IngestReport:
        """Add files, folders (walked recursively) and raw texts to the index in one atomic commit.

        An item is a path when it is a ``Path``, an existing file or folder, or a one-line string ending
        in a supported extension, or one without spaces ending in any extension (a missing one then
        fails); other strings are text documents. Each file
        that cannot be read lands in ``report.failed`` with the reason, and the others are added.
        Unchanged documents (same text and chunking) are skipped; changed ones replace their chunks.
        An unusable argument (None, an empty list, an empty or blank string, ``Path("")``, bytes, a
        number, the file-system root) raises ``DocumentError`` before anything is read.
        """
        from adaptrix_core.rag.chunking import chunk_document
        from adaptrix_core.rag.inputs import classify, expand
        from adaptrix_core.rag.readers import from_text, read_file
        from adaptrix_core.rag.store import Addition

        if progress is not None and not callable(progress):
            raise ConfigError(f"progress must be a function progress(done, total) or None, got {type(progress).__name__}.")
        started = time.perf_counter()
        report, documents = IngestReport(), {}
        items, report.skipped, report.failed = expand(classify(paths_or_texts))
        for kind, item in items:
            try:
                document = read_file(item) if kind == "path" else from_text(item)
            except DocumentError as exc:
                report.failed.append((str(item) if kind == "path" else _excerpt(item), str(exc)))
                continue
            documents.setdefault(document.doc_id, document)
        settings = self.settings
        chunking = f"{settings.chunk_size}/{settings.chunk_overlap}"
        known = self._store().states()
        pending = []
        for doc_id, document in documents.items():
            report.sources[doc_id] = document.source
            if known.get(doc_id) == (document.content_hash, chunking):
                report.unchanged.append(doc_id)
                continue
            (report.replaced if doc_id in known else report.added).append(doc_id)
            pending.append((document, chunk_document(document, self.embedder.model.tokenizer,
                                                     settings.chunk_size, settings.chunk_overlap)))
        if pending:
            vectors = self._embed([c.text for _, chunks in pending for c in chunks], progress)
            additions, offset = [], 0
            for document, chunks in pending:
                additions.append(Addition(document, chunks, vectors[offset:offset + len(chunks)], chunking))
                offset += len(chunks)
            with self._lock:
                report.generation = self._store().apply(additions, [], self._embedding_name(), self.embedder.dimension)
            report.chunks_added = offset
        report.seconds = time.perf_counter() - started
        return report

    def _embed(self, texts: list[str], progress: IngestProgress | None):
        import numpy as np

        batch = self.settings.batch_size
        parts = []
        if progress:
            progress(0, len(texts))
        for start in range(0, len(texts), batch):
            parts.append(self.embedder.encode(texts[start:start + batch], batch_size=batch))
            if progress:
                progress(min(start + batch, len(texts)), len(texts))
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dimension), dtype=np.float32)

    def _embedding_name(self) -> str:
        return self._embedding_model or BUNDLED_EMBEDDER

    def remove_document(self, doc_id: str) -> dict[str, Any]:
        """Remove a document (by id, or by the path it was added from); returns its listing."""
        from adaptrix_core.rag.readers import path_doc_id

        if isinstance(doc_id, os.PathLike):
            doc_id = os.fspath(doc_id)
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise DocumentError(f"remove_document() takes a document id or the path it was added from, got {doc_id!r}.")
        with self._lock:
            listing = {d["id"]: d for d in self._store().documents()}
            if doc_id not in listing:
                try:
                    doc_id = path_doc_id(doc_id) if path_doc_id(doc_id) in listing else doc_id
                except (OSError, RuntimeError, ValueError):
                    pass  # not a usable path: only an id can match
            if doc_id not in listing:
                raise DocumentNotFoundError(f"No document {doc_id!r} in the index {str(self._store().data_dir)!r}; "
                                            "'adaptrix index list' shows the ids.")
            self._store().apply([], [doc_id], self._embedding_name(), self.embedder.dimension)
            return listing[doc_id]

    def list_documents(self) -> list[dict[str, Any]]:
        """Every indexed document: id, source, kind, chunks, pages, chars, content_hash, added_at."""
        with self._lock:
            return self._store().documents()

    def index_stats(self) -> dict[str, Any]:
        """Documents, chunks, generation, FAISS layout, dimension, file sizes and chunking settings."""
        with self._lock:
            stats = self._store().stats()
        s = self.settings
        return {**stats, "index_type": s.index_type, "chunk_size": s.chunk_size, "chunk_overlap": s.chunk_overlap}

    # -- retrieval -----------------------------------------------------------------------------
    def retrieve(self, query: str, top_k: int | None = None, min_score: float | None = None) -> list[dict[str, Any]]:
        """The ``top_k`` passages most similar to ``query`` scoring at least ``min_score``, best first.

        Each is a dict: document (id), source, chunk (id), ordinal, page, start, end, score, text.
        """
        return self._search(query, top_k, min_score)[1]

    def _search(self, query: str, top_k: int | None, min_score: float | None) -> tuple[Any, list[dict[str, Any]]]:
        from adaptrix_core.rag.inputs import check_text

        query = check_text(query, "The retrieve() query")
        top_k = self.settings.top_k if top_k is None else top_k
        min_score = self.settings.min_score if min_score is None else min_score
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InvalidPromptError(f"top_k must be a positive integer, got {top_k!r}.")
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or math.isnan(min_score):
            raise InvalidPromptError(f"min_score must be a number (a cosine similarity, -1 to 1), got {min_score!r}.")
        vector = self.embedder.encode([query])[0]
        with self._lock:
            hits = self._store().search(vector, top_k, self._embedding_name())
        return vector, [hit for hit in hits if hit["score"] >= min_score]

    def rag_messages(self, prompt: str, top_k: int | None, min_score: float | None) -> tuple[list[dict], list[dict]]:
        """(messages, sources): one user message with the numbered passages, the instruction and the question.

        With ``rag.prompt_sentences`` = N the passages are cut down to the N sentences most relevant to
        the question (see :mod:`adaptrix_core.rag.prompt`); passages left empty are not shown. The
        sources are the passages shown, each with ``citation`` (its number) and ``excerpt`` (the text
        shown); ``text`` stays the whole chunk. Without a passage above ``min_score`` the message is
        the bare question and the sources list is empty.
        """
        from adaptrix_core.rag.prompt import build_prompt, select, sentences_in

        vector, hits = self._search(prompt, top_k, min_score)
        count = self.settings.prompt_sentences
        if count is None:
            texts = [" ".join(hit["text"].split()) for hit in hits]
        else:
            with self._lock:  # one read transaction for every passage's neighbourhood
                around = self._store().spans([(hit["document"], hit["start"] - 400, hit["end"] + 400) for hit in hits])
            candidates = [sentences_in(text, hit["start"] - offset, hit["end"] - offset)
                          for hit, (offset, text) in zip(hits, around)]
            texts = [" ".join(chosen) for chosen in select(prompt, vector, candidates, self.embedder.encode, count)]
        sources = [dict(hit, excerpt=text) for hit, text in zip(hits, texts) if text]
        if not sources:
            return [{"role": "user", "content": prompt}], []
        for number, source in enumerate(sources, start=1):
            source["citation"] = number
        content = build_prompt(prompt, sources, [s["excerpt"] for s in sources], cite=self.settings.cite)
        return [{"role": "user", "content": content}], sources


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat[:60] + ("..." if len(flat) > 60 else "")
