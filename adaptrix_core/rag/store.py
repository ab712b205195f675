"""The document index on disk: chunk metadata in SQLite, vectors in one FAISS file per generation.

Layout of the data directory::

    chunks.sqlite          meta (key/value), documents, chunks (id = FAISS id, text, page, offsets)
    vectors.<G>.faiss      the FAISS index of generation G (the one SQLite's meta names)

Commit protocol (one commit per ``apply``): open a write transaction (``BEGIN IMMEDIATE``), make
the row changes, write the new FAISS index to ``vectors.<G+1>.faiss.tmp``, fsync it, rename it to
``vectors.<G+1>.faiss``, record G+1 with the file's size and sha256 in ``meta``, then COMMIT.
The SQLite commit is the single commit point: a crash before it rolls SQLite back to generation G,
whose file is still there; a crash after it leaves generation G+1 complete. Files of other
generations are deleted only after a successful commit. Loading checks that the named file exists
with the recorded size and sha256, parses, and holds exactly the chunk ids SQLite lists; any
disagreement raises :class:`IndexCorruptError` and nothing on disk is touched.

Readers run inside one read transaction, so the FAISS file they load matches the rows they read;
writers in other processes wait for them (SQLite locking, 30 s busy timeout).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from adaptrix_core.errors import ConfigError, IndexCorruptError
from adaptrix_core.rag import vectors as vec
from adaptrix_core.rag.chunking import Chunk
from adaptrix_core.rag.readers import Document

DB_NAME = "chunks.sqlite"
SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, content_hash TEXT NOT NULL,
    chunking TEXT NOT NULL, chars INTEGER NOT NULL, pages INTEGER NOT NULL, chunks INTEGER NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES documents(doc_id), ordinal INTEGER NOT NULL,
    page INTEGER, start INTEGER NOT NULL, "end" INTEGER NOT NULL, tokens INTEGER NOT NULL, text TEXT NOT NULL);
CREATE INDEX chunks_by_doc ON chunks(doc_id);
"""


@dataclass(frozen=True)
class Addition:
    """A document to (re)write, with its chunks and their vectors (one row per chunk)."""

    document: Document
    chunks: Sequence[Chunk]
    vectors: Any
    chunking: str


class IndexStore:
    """Reads and atomically rewrites the index in ``data_dir`` (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike, index_type: str = "flat", nprobe: int = 16, ef_search: int = 64):
        self.data_dir = Path(data_dir).expanduser()
        self.db_path = self.data_dir / DB_NAME
        self.index_type, self.nprobe, self.ef_search = index_type, nprobe, ef_search
        self._cache: tuple[str, str, Any] | None = None  # (generation, sha256, index)

    # -- reading -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._corrupt(f"{str(self.db_path)!r} is not a readable SQLite database ({exc})") from None
        return conn

    def _read(self) -> tuple[sqlite3.Connection, dict[str, str]] | None:
        """A connection inside a read transaction and the meta table, or None for an empty store."""
        if not self.db_path.exists():
            return None
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            return conn, self._meta(conn)
        except BaseException:
            conn.close()
            raise

    def _meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return {}
            meta = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(f"{str(self.db_path)!r} is not a readable SQLite database ({exc})") from None
        if meta.get("schema") != SCHEMA_VERSION or "generation" not in meta:
            raise self._corrupt(f"{str(self.db_path)!r} holds no Adaptrix index metadata (schema {meta.get('schema')!r})")
        return meta

    def _corrupt(self, reason: str) -> IndexCorruptError:
        return IndexCorruptError(f"The document index in {str(self.data_dir)!r} is damaged: {reason}. Nothing was "
                                 "changed on disk; restore the folder from a backup, or move it away and add the "
                                 "documents again.")

    def _index(self, conn: sqlite3.Connection, meta: dict[str, str]) -> Any:
        """The verified FAISS index of the committed generation (cached while it stays current)."""
        generation, digest = meta["generation"], meta["vectors_sha256"]
        if self._cache and self._cache[:2] == (generation, digest):
            return self._cache[2]
        path = self.data_dir / meta["vectors_file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self._corrupt(f"vector file {path.name!r} of generation {generation} cannot be read "
                                f"({exc.strerror or exc})") from None
        if len(data) != int(meta["vectors_bytes"]) or hashlib.sha256(data).hexdigest() != digest:
            raise self._corrupt(f"vector file {path.name!r} has {len(data)} bytes and another checksum than the "
                                f"{meta['vectors_bytes']} bytes recorded for generation {generation}")
        try:
            index = vec.deserialize(data)
        except ValueError as exc:
            raise self._corrupt(f"vector file {path.name!r} is not a FAISS index ({exc})") from None
        try:
            chunk_ids = [row[0] for row in conn.execute("SELECT id FROM chunks ORDER BY id")]
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(f"{str(self.db_path)!r} cannot be read ({exc})") from None
        if index.d != int(meta["dimension"]) or vec.ids_of(index).tolist() != chunk_ids:
            raise self._corrupt(f"vector file {path.name!r} holds {index.ntotal} vectors of dimension {index.d} that do "
                                f"not match the {len(chunk_ids)} chunks of dimension {meta['dimension']} in {DB_NAME}")
        vec.configure(index, self.nprobe, self.ef_search)
        self._cache = (generation, digest, index)
        return index

    def check(self) -> dict[str, str]:
        """Load and verify the committed state; returns the meta table ({} for an empty store)."""
        opened = self._read()
        if opened is None:
            return {}
        conn, meta = opened
        with closing(conn):
            if meta:
                self._index(conn, meta)
            return meta

    def documents(self) -> list[dict[str, Any]]:
        """Every document, in the order added."""
        opened = self._read()
        if opened is None:
            return []
        conn, meta = opened
        with closing(conn):
            if not meta:
                return []
            self._index(conn, meta)
            rows = conn.execute("SELECT doc_id, source, kind, chunks, pages, chars, content_hash, added_at "
                                "FROM documents ORDER BY added_at, doc_id").fetchall()
            return [{"id": r["doc_id"], **{k: r[k] for k in r.keys() if k != "doc_id"}} for r in rows]

    def states(self) -> dict[str, tuple[str, str]]:
        """doc_id -> (content_hash, chunking) of every stored document."""
        opened = self._read()
        if opened is None:
            return {}
        conn, meta = opened
        with closing(conn):
            if not meta:
                return {}
            self._index(conn, meta)
            return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT doc_id, content_hash, chunking FROM documents")}

    def search(self, query, k: int) -> list[dict[str, Any]]:
        """The ``k`` chunks nearest to the query vector, best first, with their document's fields."""
        opened = self._read()
        if opened is None:
            return []
        conn, meta = opened
        with closing(conn):
            if not meta:
                return []
            scores, ids = vec.search(self._index(conn, meta), query, k)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = {r["id"]: r for r in conn.execute(
                f'SELECT c.id, c.doc_id, d.source, c.ordinal, c.page, c.start, c."end", c.text FROM chunks c '
                f"JOIN documents d ON d.doc_id = c.doc_id WHERE c.id IN ({marks})", ids)}
        return [{"document": rows[i]["doc_id"], "source": rows[i]["source"], "chunk": i, "ordinal": rows[i]["ordinal"],
                 "page": rows[i]["page"], "start": rows[i]["start"], "end": rows[i]["end"], "score": score,
                 "text": rows[i]["text"]} for score, i in zip(scores, ids)]

    def span(self, doc_id: str, start: int, end: int) -> tuple[int, str]:
        """(offset, text) of document ``doc_id``'s extracted text around [start, end), stitched from its chunks.

        Chunks overlap, so together they hold the whole text except the blank lines between PDF pages,
        which come back as spaces. Used to widen a passage to whole sentences.
        """
        opened = self._read()
        if opened is None:
            return start, ""
        conn, meta = opened
        with closing(conn):
            rows = conn.execute('SELECT start, "end", text FROM chunks WHERE doc_id = ? AND "end" > ? AND start < ? '
                                "ORDER BY start", (doc_id, start, end)).fetchall() if meta else []
        if not rows:
            return start, ""
        first = rows[0]["start"]
        buffer = [" "] * (max(r["end"] for r in rows) - first)
        for row in rows:
            buffer[row["start"] - first:row["end"] - first] = row["text"]
        return first, "".join(buffer)

    def stats(self) -> dict[str, Any]:
        """Counts, generation, layout and file sizes of the committed state."""
        meta = self.check()
        opened = self._read()
        counts = {"documents": 0, "chunks": 0}
        if opened is not None and meta:
            conn, _ = opened
            with closing(conn):
                counts = {"documents": conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
                          "chunks": conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]}
        vectors_file = self.data_dir / meta["vectors_file"] if meta else None
        return {"data_dir": str(self.data_dir), **counts, "generation": int(meta.get("generation", 0)),
                "layout": meta.get("layout"), "dimension": int(meta["dimension"]) if meta else None,
                "embedding_model": meta.get("embedding_model"),
                "vectors_file": vectors_file.name if vectors_file else None,
                "vectors_bytes": int(meta.get("vectors_bytes", 0)),
                "sqlite_bytes": self.db_path.stat().st_size if self.db_path.exists() else 0}

    # -- writing -------------------------------------------------------------------------------
    def apply(self, additions: Sequence[Addition], removals: Sequence[str], embedding_model: str, dimension: int) -> int:
        """Atomically replace/add ``additions`` and delete documents ``removals``; returns the new generation.

        Documents of an addition that are already stored are replaced (their chunks deleted first).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                generation = self._write(conn, additions, removals, embedding_model, dimension)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._cache = None
                raise
            self._remove_stale(conn)
        return generation

    def _write(self, conn: sqlite3.Connection, additions: Sequence[Addition], removals: Sequence[str],
               embedding_model: str, dimension: int) -> int:
        meta = self._meta(conn)
        if not meta:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            meta = {"schema": SCHEMA_VERSION, "generation": "0", "dimension": str(dimension),
                    "embedding_model": embedding_model, "layout": "flat", "trained_on": "0", "next_id": "1"}
            index = vec.build("flat", dimension, [], [])
        else:
            index = self._index(conn, meta)
            if int(meta["dimension"]) != dimension or meta["embedding_model"] != embedding_model:
                raise ConfigError(f"The index in {str(self.data_dir)!r} was built with {meta['embedding_model']} "
                                  f"({meta['dimension']} dimensions), not {embedding_model} ({dimension}); use another "
                                  "rag.data_dir or the same embedding model.")
        doomed = list(dict.fromkeys([*removals, *(a.document.doc_id for a in additions)]))
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
        _write_vectors(self.data_dir / name, data)
        meta.update(generation=str(generation), vectors_file=name, vectors_bytes=str(len(data)), layout=layout,
                    vectors_sha256=hashlib.sha256(data).hexdigest(), next_id=str(next_id))
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        vec.configure(index, self.nprobe, self.ef_search)
        self._cache = (meta["generation"], meta["vectors_sha256"], index)
        return generation

    def _remove_stale(self, conn: sqlite3.Connection) -> None:
        """Delete vector files of other generations, holding the write lock so no writer is mid-commit."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._meta(conn).get("vectors_file")
            for path in self.data_dir.glob("vectors.*.faiss*"):
                if path.name != current:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError:
                        pass  # harmless: a stale file is retried at the next commit
        finally:
            conn.execute("ROLLBACK")


def _write_vectors(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: a temporary file, fsync, rename, fsync of the folder."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
