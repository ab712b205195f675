"""The index folder's files: SQLite connections that always close, typed errors, durable writes.

:class:`IndexFolder` is the base of :class:`~adaptrix_core.rag.store.IndexStore`: it opens
``chunks.sqlite`` so that the connection (and any lock it holds) is released on every path, turns
SQLite's errors into :class:`IndexCorruptError` (damaged file) or :class:`IndexAccessError`
(locked past the wait, read-only, disk full), and checks the folder before a read or a write.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adaptrix_core.errors import ConfigError, IndexAccessError, IndexCorruptError
from adaptrix_core.rag.integrity import error_kind

DB_NAME = "chunks.sqlite"
BUSY_TIMEOUT = 30


class IndexFolder:
    """``data_dir`` and its ``chunks.sqlite``: connections, error translation, folder checks."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir).expanduser()
        self.db_path = self.data_dir / DB_NAME

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection closed on every path (so no lock outlives the call); SQLite errors become typed errors."""
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None
        try:
            with self._typed_errors():
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA synchronous=FULL")
                yield conn
        finally:
            conn.close()

    @contextmanager
    def _typed_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None

    def _sqlite_error(self, exc: sqlite3.Error) -> Exception:
        kind = error_kind(exc)
        if kind == "corrupt":
            return self._corrupt(f"{str(self.db_path)!r} is not a readable SQLite database ({exc})")
        if kind == "busy":
            return IndexAccessError(f"The document index in {str(self.data_dir)!r} stayed locked by another process "
                                    f"writing to it for {BUSY_TIMEOUT} s ({exc}); nothing was changed. Retry when "
                                    "that process is done.")
        if kind == "access":
            return IndexAccessError(f"The document index in {str(self.data_dir)!r} cannot be read or written ({exc}); "
                                    "nothing committed was changed. Check the folder's permissions and free space.")
        return exc

    def _corrupt(self, reason: str) -> IndexCorruptError:
        return IndexCorruptError(f"The document index in {str(self.data_dir)!r} is damaged: {reason}. Nothing was "
                                 "changed on disk; restore the folder from a backup, or move it away and add the "
                                 "documents again.")

    def _database_present(self) -> bool:
        try:
            if self.data_dir.exists() and not self.data_dir.is_dir():
                raise ConfigError(f"rag.data_dir {str(self.data_dir)!r} is a file, not a folder; point rag.data_dir "
                                  "(--data-dir) at a folder.")
            if self.db_path.is_file():
                return True
            if self.db_path.exists():
                raise self._corrupt(f"{DB_NAME} is not a file")
        except OSError as exc:
            raise IndexAccessError(f"The document index in {str(self.data_dir)!r} cannot be read "
                                   f"({exc.strerror or exc}).") from None
        self._require_no_vectors(f"{DB_NAME} is missing")
        return False

    def _require_no_vectors(self, why: str) -> None:
        """An empty index has no vector file (the empty tables commit first); one there means damage."""
        found = sorted(p.name for p in self.data_dir.glob("vectors.*.faiss"))
        if found:
            raise self._corrupt(f"{why} but the folder holds {', '.join(found[:3])} ({DB_NAME} deleted, truncated or "
                                "replaced?)")

    def _signature(self) -> tuple[int, ...]:
        """Identity, size and timestamps of chunks.sqlite: a change outside our commits forces a new check."""
        try:
            st = os.stat(self.db_path)
        except OSError:
            return ()
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def _prepare_folder(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"rag.data_dir {str(self.data_dir)!r} is (or lies under) a file, not a folder; point "
                              "rag.data_dir (--data-dir) at a folder.") from None
        except OSError as exc:
            raise IndexAccessError(f"The index folder {str(self.data_dir)!r} cannot be created "
                                   f"({exc.strerror or exc}).") from None
        self._database_present()  # vector files without a database: damage, refused before writing


def rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # closing the connection rolls back as well


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a stale file is removed by the next commit


def write_vectors(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: a temporary file, fsync, rename, fsync of the folder.

    A failure before the rename removes the temporary file, so no half-written file stays behind.
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        unlink_quietly(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
