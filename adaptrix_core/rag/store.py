"""The document index on disk: chunk metadata in SQLite, vectors in one FAISS file per generation.

Layout of the data directory::

    chunks.sqlite          meta (key/value), documents, chunks (id = FAISS id, text, page, offsets)
    vectors.<G>.faiss      the FAISS index of generation G (the one SQLite's meta names)

Commit protocol (one commit per ``apply``): open a write transaction (``BEGIN IMMEDIATE``), make
the row changes, write the new FAISS index to ``vectors.<G+1>.faiss.tmp``, fsync it, rename it to
``vectors.<G+1>.faiss``, record G+1 with the file's size and sha256 (and the rows' checksum) in
``meta``, then COMMIT. The SQLite commit is the single commit point: a crash before it rolls
SQLite back to generation G, whose file is still there; a crash after it leaves generation G+1
complete. A failure before it removes the files this commit wrote. Files of other generations are
deleted only after a successful commit. A new index first commits its empty tables (generation
0), so an empty or missing ``chunks.sqlite`` beside a vector file always means damage.

Every read and write opens the committed state through :meth:`IndexStore._committed` (or the
writer's transaction), which verifies it the first time this process meets it (see
:mod:`adaptrix_core.rag.integrity`): the named vector file exists with the recorded size and
sha256, parses, holds exactly the chunk ids SQLite lists, and the database passes SQLite's page
check and matches its recorded row checksum. Any disagreement, and any damaged page a query meets
later, raises :class:`IndexCorruptError`; nothing on disk is touched. Connections are closed on
every path, so no read leaves a lock behind.

Readers run inside one read transaction, so the FAISS file they load matches the rows they read;
writers in other processes wait for them (SQLite locking, 30 s busy timeout).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptrix_core.errors import AdaptrixError, ConfigError, IndexAccessError
from adaptrix_core.rag import vectors as vec
from adaptrix_core.rag.chunking import Chunk
from adaptrix_core.rag.integrity import digest_text, rows_digest, structure_problems
from adaptrix_core.rag.readers import Document
from adaptrix_core.rag.storage import DB_NAME, IndexFolder, rollback, unlink_quietly
from adaptrix_core.rag.storage import write_vectors as _write_vectors  # a module global, so tests can replace it

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, content_hash TEXT NOT NULL,
    chunking TEXT NOT NULL, chars INTEGER NOT NULL, pages INTEGER NOT NULL, chunks INTEGER NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES documents(doc_id), ordinal INTEGER NOT NULL,
    page INTEGER, start INTEGER NOT NULL, "end" INTEGER NOT NULL, tokens INTEGER NOT NULL, text TEXT NOT NULL);
CREATE INDEX chunks_by_doc ON chunks(doc_id);
"""
_VECTORS_FILE = re.compile(r"vectors\.[0-9]+\.faiss")
_LAYOUT = re.compile(r"flat|hnsw|ivf[0-9]+")


@dataclass(frozen=True)
class Addition:
    """A document to (re)write, with its chunks and their vectors (one row per chunk)."""

    document: Document
    chunks: Sequence[Chunk]
    vectors: Any
    chunking: str


@dataclass(frozen=True)
class Committed:
    """A verified committed generation, seen inside one open read transaction."""

    conn: sqlite3.Connection
    meta: dict[str, str]
    index: Any


class IndexStore(IndexFolder):
    """Reads and atomically rewrites the index in ``data_dir`` (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike, index_type: str = "flat", nprobe: int = 16, ef_search: int = 64):
        super().__init__(data_dir)
        self.index_type, self.nprobe, self.ef_search = index_type, nprobe, ef_search
        # ((generation, vectors sha256, database file signature), verified index)
        self._cache: tuple[tuple, Any] | None = None

    # -- reading -------------------------------------------------------------------------------
    @contextmanager
    def _committed(self) -> Iterator[Committed | None]:
        """The verified committed state inside one read transaction; None when nothing is committed yet.

        Every read goes through here: the connection (and its read lock) is released however the
        caller's block ends, and SQLite errors its queries meet become typed errors.
        """
        if not self._database_present():
            yield None
            return
        with self._connection() as conn:
            conn.execute("BEGIN")
            meta = self._meta(conn)
            if not meta:
                self._require_no_vectors(f"{DB_NAME} holds no index")
            if not meta or meta["generation"] == "0":
                yield None
            else:
                yield Committed(conn, meta, self._index(conn, meta))

    def _meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        """The meta table, checked; {} when the database holds no tables at all."""
        if not conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            return {}
        meta = {str(row["key"]): str(row["value"]) for row in conn.execute("SELECT key, value FROM meta")}
        if meta.get("schema") != SCHEMA_VERSION or "generation" not in meta:
            raise self._corrupt(f"{str(self.db_path)!r} holds no Adaptrix index metadata (schema {meta.get('schema')!r})")
        numbers = ("generation", "dimension", "next_id", "trained_on")
        files = ("vectors_file", "vectors_bytes", "vectors_sha256", "layout") if meta["generation"] != "0" else ()
        bad = [key for key in numbers if not meta.get(key, "").isdigit()] + [key for key in files if key not in meta]
        if not bad and files and not (_VECTORS_FILE.fullmatch(meta["vectors_file"]) and meta["vectors_bytes"].isdigit()
                                      and _LAYOUT.fullmatch(meta["layout"])):
            bad = ["vectors_file", "vectors_bytes", "layout"]
        if "rows_digest" in meta and not re.fullmatch(r"[0-9a-f]{64}", meta["rows_digest"]):
            bad.append("rows_digest")
        if bad:
            raise self._corrupt(f"the meta table of {DB_NAME} has missing or invalid {', '.join(bad)}")
        return meta

    def _index(self, conn: sqlite3.Connection, meta: dict[str, str]) -> Any:
        """The verified FAISS index of the committed generation (verified once per generation and file state)."""
        generation, digest = meta["generation"], meta["vectors_sha256"]
        key = (generation, digest, self._signature())
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        problems = structure_problems(conn)
        if problems:
            raise self._corrupt(f"SQLite finds damaged pages in {DB_NAME}: {problems}")
        path = self.data_dir / meta["vectors_file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self._corrupt(f"vector file {path.name!r} of generation {generation} cannot be read "
                                f"({exc.strerror or exc})") from None
        if len(data) != int(meta["vectors_bytes"]) or hashlib.sha256(data).hexdigest() != digest:
            raise self._corrupt(f"vector file {path.name!r} has {len(data)} bytes and another checksum than the "
                                f"{meta['vectors_bytes']} bytes recorded for generation {generation}")
        if "rows_digest" in meta and digest_text(rows_digest(conn)) != meta["rows_digest"]:
            raise self._corrupt(f"the rows of {DB_NAME} do not match the checksum recorded at generation {generation} "
                                "(bytes inside the file were changed)")
        try:
            index = vec.deserialize(data)
        except ValueError as exc:
            raise self._corrupt(f"vector file {path.name!r} is not a FAISS index ({exc})") from None
        chunk_ids = [row[0] for row in conn.execute("SELECT id FROM chunks ORDER BY id")]
        if index.d != int(meta["dimension"]) or vec.ids_of(index).tolist() != chunk_ids:
            raise self._corrupt(f"vector file {path.name!r} holds {index.ntotal} vectors of dimension {index.d} that do "
                                f"not match the {len(chunk_ids)} chunks of dimension {meta['dimension']} in {DB_NAME}")
        vec.configure(index, self.nprobe, self.ef_search)
        self._cache = (key, index)
        return index

    def check(self) -> dict[str, str]:
        """Load and verify the committed state; returns the meta table ({} for an empty store)."""
        with self._committed() as state:
            return dict(state.meta) if state else {}

    def documents(self) -> list[dict[str, Any]]:
        """Every document, in the order added."""
        with self._committed() as state:
            if state is None:
                return []
            rows = state.conn.execute("SELECT doc_id, source, kind, chunks, pages, chars, content_hash, added_at "
                                      "FROM documents ORDER BY added_at, doc_id").fetchall()
        return [{"id": r["doc_id"], **{k: r[k] for k in r.keys() if k != "doc_id"}} for r in rows]

    def states(self) -> dict[str, tuple[str, str]]:
        """doc_id -> (content_hash, chunking) of every stored document."""
        with self._committed() as state:
            if state is None:
                return {}
            return {r[0]: (r[1], r[2]) for r in state.conn.execute("SELECT doc_id, content_hash, chunking FROM documents")}

    def search(self, query, k: int, embedding_model: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` chunks nearest to the query vector, best first, with their document's fields.

        ``embedding_model`` (the name of the model that embedded the query) must be the index's.
        """
        with self._committed() as state:
            if state is None:
                return []
            meta = state.meta
            if len(query) != state.index.d or (embedding_model and embedding_model != meta["embedding_model"]):
                raise ConfigError(f"The index in {str(self.data_dir)!r} was built with {meta['embedding_model']} "
                                  f"({meta['dimension']} dimensions); this query was embedded with "
                                  f"{embedding_model or 'another model'} ({len(query)}). Use another rag.data_dir "
                                  "or the same embedding model.")
            scores, ids = vec.search(state.index, query, k)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = {r["id"]: r for r in state.conn.execute(
                f'SELECT c.id, c.doc_id, d.source, c.ordinal, c.page, c.start, c."end", c.text FROM chunks c '
                f"JOIN documents d ON d.doc_id = c.doc_id WHERE c.id IN ({marks})", ids)}
        if set(ids) - set(rows):
            raise self._corrupt(f"chunks {sorted(set(ids) - set(rows))[:5]} of the vector file have no rows in {DB_NAME}")
        return [{"document": rows[i]["doc_id"], "source": rows[i]["source"], "chunk": i, "ordinal": rows[i]["ordinal"],
                 "page": rows[i]["page"], "start": rows[i]["start"], "end": rows[i]["end"], "score": score,
                 "text": rows[i]["text"]} for score, i in zip(scores, ids)]

    def spans(self, requests: Sequence[tuple[str, int, int]]) -> list[tuple[int, str]]:
        """(offset, text) for each (doc_id, start, end): the document's text around [start, end), in one read.

        The text is stitched from the document's chunks. Chunks overlap, so together they hold the
        whole text except the blank lines between PDF pages, which come back as spaces. Used to
        widen passages to whole sentences.
        """
        with self._committed() as state:
            found = [state.conn.execute('SELECT start, "end", text FROM chunks WHERE doc_id = ? AND "end" > ? '
                                        "AND start < ? ORDER BY start", request).fetchall() if state else []
                     for request in requests]
        return [_stitch(rows, start) for rows, (_, start, _) in zip(found, requests)]

    def span(self, doc_id: str, start: int, end: int) -> tuple[int, str]:
        """(offset, text) of document ``doc_id``'s text around [start, end) (see :meth:`spans`)."""
        return self.spans([(doc_id, start, end)])[0]

    def stats(self) -> dict[str, Any]:
        """Counts, generation, layout and file sizes of the committed state."""
        with self._committed() as state:
            meta = state.meta if state else {}
            counts = {"documents": 0, "chunks": 0} if state is None else {
                "documents": state.conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
                "chunks": state.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]}
        try:
            sqlite_bytes = self.db_path.stat().st_size if self.db_path.exists() else 0
        except OSError:
            sqlite_bytes = 0
        return {"data_dir": str(self.data_dir), **counts, "generation": int(meta.get("generation", 0)),
                "layout": meta.get("layout"), "dimension": int(meta["dimension"]) if meta else None,
                "embedding_model": meta.get("embedding_model"), "vectors_file": meta.get("vectors_file"),
                "vectors_bytes": int(meta.get("vectors_bytes", 0)), "sqlite_bytes": sqlite_bytes}

    # -- writing -------------------------------------------------------------------------------
    def apply(self, additions: Sequence[Addition], removals: Sequence[str], embedding_model: str, dimension: int) -> int:
        """Atomically replace/add ``additions`` and delete documents ``removals``; returns the new generation.

        Documents of an addition that are already stored are replaced (their chunks deleted first).
        On any failure the committed generation stays as it was and the files this call wrote are
        removed; file-system failures raise :class:`IndexAccessError`.
        """
        self._prepare_folder()
        written: list[Path] = []
        with self._connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                generation, meta, index = self._write(conn, additions, removals, embedding_model, dimension, written)
                conn.execute("COMMIT")
            except BaseException as exc:
                self._cache = None  # the cached index may hold this commit's uncommitted changes
                rollback(conn)
                for path in written:
                    unlink_quietly(path)
                if isinstance(exc, OSError) and not isinstance(exc, AdaptrixError):
                    raise IndexAccessError(f"The document index in {str(self.data_dir)!r} could not be written "
                                           f"({exc.strerror or exc}); it still holds its last committed state.") from exc
                raise
            self._cache = ((meta["generation"], meta["vectors_sha256"], self._signature()), index)
            self._remove_stale(conn)
        return generation

    def _write(self, conn: sqlite3.Connection, additions: Sequence[Addition], removals: Sequence[str],
               embedding_model: str, dimension: int, written: list[Path]) -> tuple[int, dict[str, str], Any]:
        meta = self._meta(conn)
        if not meta:
            self._require_no_vectors(f"{DB_NAME} holds no index")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema", SCHEMA_VERSION), ("generation", "0"), ("dimension", str(dimension)),
                ("embedding_model", embedding_model), ("layout", "flat"), ("trained_on", "0"), ("next_id", "1")])
            # The empty index is a commit of its own: a crash during the first real commit then leaves
            # generation 0, never an empty database beside a vector file (which reads as damage).
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            meta = self._meta(conn)
        if meta["generation"] == "0":
            meta.update(dimension=str(dimension), embedding_model=embedding_model, layout="flat", trained_on="0")
            index = vec.build("flat", dimension, [], [])
        else:
            index = self._index(conn, meta)
            if int(meta["dimension"]) != dimension or meta["embedding_model"] != embedding_model:
                raise ConfigError(f"The index in {str(self.data_dir)!r} was built with {meta['embedding_model']} "
                                  f"({meta['dimension']} dimensions), not {embedding_model} ({dimension}); use another "
                                  "rag.data_dir or the same embedding model.")
        doomed = list(dict.fromkeys([*removals, *(a.document.doc_id for a in additions)]))
        # The rows checksum follows the changes; an index written before it existed gets a full one.
        rows = 0 if meta["generation"] == "0" else int(meta["rows_digest"], 16) if "rows_digest" in meta else None
        if rows is not None:
            rows -= rows_digest(conn, doomed)
        old_ids = [row[0] for name in doomed
                   for row in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (name,))]
        conn.executemany("DELETE FROM chunks WHERE doc_id = ?", [(name,) for name in doomed])
        conn.executemany("DELETE FROM documents WHERE doc_id = ?", [(name,) for name in doomed])
        index = vec.remove(index, meta["layout"], old_ids)
        next_id = int(meta["next_id"])
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        for addition in additions:
            doc, ids = addition.document, list(range(next_id, next_id + len(addition.chunks)))
            next_id += len(ids)
            conn.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (doc.doc_id, doc.source, doc.kind, doc.content_hash, addition.chunking, len(doc.text),
                          len(doc.pages), len(ids), now))
            conn.executemany('INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                             [(i, doc.doc_id, c.ordinal, c.page, c.start, c.end, c.tokens, c.text)
                              for i, c in zip(ids, addition.chunks)])
            vec.add(index, ids, addition.vectors)
        layout = vec.desired_layout(self.index_type, index.ntotal, meta["layout"], int(meta["trained_on"]))
        if layout != meta["layout"]:
            index = vec.build(layout, dimension, *vec.contents(index))
            meta["trained_on"] = str(index.ntotal) if layout.startswith("ivf") else "0"
        generation = int(meta["generation"]) + 1
        name = f"vectors.{generation}.faiss"
        data = vec.serialize(index)
        written.append(self.data_dir / name)
        _write_vectors(self.data_dir / name, data)
        meta.update(generation=str(generation), vectors_file=name, vectors_bytes=str(len(data)), layout=layout,
                    vectors_sha256=hashlib.sha256(data).hexdigest(), next_id=str(next_id),
                    rows_digest=digest_text(rows_digest(conn) if rows is None
                                            else rows + rows_digest(conn, [a.document.doc_id for a in additions])))
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        vec.configure(index, self.nprobe, self.ef_search)
        return generation, meta, index

    def _remove_stale(self, conn: sqlite3.Connection) -> None:
        """Delete vector files of other generations, holding the write lock so no writer is mid-commit.

        Best effort: the commit is done, so a failure here only leaves stale files for the next commit.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._meta(conn).get("vectors_file")
                for path in self.data_dir.glob("vectors.*.faiss*"):
                    if path.name != current:
                        unlink_quietly(path)
            finally:
                conn.execute("ROLLBACK")
        except (sqlite3.Error, AdaptrixError):
            pass


def _stitch(rows: Sequence[sqlite3.Row], start: int) -> tuple[int, str]:
    if not rows:
        return start, ""
    first = rows[0]["start"]
    buffer = [" "] * (max(r["end"] for r in rows) - first)
    for row in rows:
        buffer[row["start"] - first:row["end"] - first] = row["text"]
    return first, "".join(buffer)
