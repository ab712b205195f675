"""The request log's SQLite file: a versioned schema, batched writes, retention, filtered reads.

The file is in WAL mode with ``synchronous=FULL``: a batch is one transaction, and once it has
committed its rows survive a crash of the process (or of the machine). A file that is not an
Adaptrix request log, or one written by a newer schema, is refused and never modified.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adaptrix_core.errors import MonitoringError

SCHEMA_VERSION = 1
APPLICATION = "adaptrix-monitoring"
BASE_LABEL = "(base)"  # parentheses never occur in adapter names, so no adapter can be mistaken for it

#: Columns of ``requests`` in order (``id`` and ``adapter_label`` are derived).
REQUEST_COLUMNS = (
    "time", "model", "backend", "adapters", "adapter_weights", "adapter_label", "router", "routed",
    "route_confidence", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "tokens_per_s",
    "finish_reason", "error_type", "source", "prompt", "answer",
)
EVENT_COLUMNS = ("time", "kind", "adapter", "seconds")
_JSON_COLUMNS = ("adapters", "adapter_weights", "routed")

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,               -- Unix seconds
    model TEXT,
    backend TEXT,
    adapters TEXT NOT NULL,           -- JSON list of adapter names
    adapter_weights TEXT NOT NULL,    -- JSON object name -> weight
    adapter_label TEXT NOT NULL,      -- '{BASE_LABEL}', a name, or 'mix(a=0.7,b=0.3)': the group of adaptrix stats
    router TEXT,                      -- routing decision (adapter='auto'): router name,
    routed TEXT,                      --   chosen adapters as JSON {{name: weight}},
    route_confidence REAL,            --   and its confidence
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    tokens_per_s REAL,
    finish_reason TEXT,
    error_type TEXT,                  -- exception class name; NULL on success
    source TEXT NOT NULL,             -- library | cli | server
    prompt TEXT,                      -- only with monitoring.store_text
    answer TEXT                       -- only with monitoring.store_text
);
CREATE INDEX requests_by_time ON requests (time);
CREATE INDEX requests_by_label ON requests (adapter_label, time);
CREATE TABLE adapter_events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,               -- load | unload | evict
    adapter TEXT NOT NULL,
    seconds REAL
);
CREATE INDEX adapter_events_by_time ON adapter_events (time);
"""


def adapter_label(weights: dict[str, float] | None) -> str:
    """The group a request counts in: the base model, one adapter at weight 1, or the weighted mix."""
    if not weights:
        return BASE_LABEL
    if len(weights) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(weights))
    return "mix(" + ",".join(f"{name}={weight:g}" for name, weight in sorted(weights.items())) + ")"


def _not_ours(path: Path, detail: str) -> MonitoringError:
    return MonitoringError(
        f"{str(path)!r} is not an Adaptrix request log ({detail}); it was left as it is. Set monitoring.path "
        "(or ADAPTRIX_MONITORING__PATH) to another file, or move this one away."
    )


def _check_meta(connection: sqlite3.Connection, path: Path) -> bool:
    """True when the file holds our schema, False when it is empty; raise for anything else."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return False
    if "meta" not in tables:
        raise _not_ours(path, f"it holds the tables {', '.join(sorted(tables))}")
    meta = dict(connection.execute("SELECT key, value FROM meta"))
    if meta.get("application") != APPLICATION:
        raise _not_ours(path, "its meta table belongs to another application")
    raw_version = str(meta.get("schema_version", ""))
    if not raw_version.isdigit():
        raise _not_ours(path, f"its schema version is {raw_version!r}")
    version = int(raw_version)
    if version > SCHEMA_VERSION:
        raise MonitoringError(
            f"The request log {str(path)!r} has schema version {version}, newer than this Adaptrix reads "
            f"({SCHEMA_VERSION}); upgrade Adaptrix or point monitoring.path at another file."
        )
    return True


class MonitoringStore:
    """One connection to the request log. Open with :meth:`open` (writer) or :meth:`open_readonly` (stats)."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.connection = connection
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> MonitoringStore:
        """Open ``path`` for writing, creating it (and its folder) with the schema when new."""
        path = Path(path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise MonitoringError(f"Cannot open the request log {str(path)!r}: {exc}. Set monitoring.path to a "
                                  "writable file or monitoring.enabled to false.") from None
        try:
            existing = _check_meta(connection, path)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")  # a committed batch survives a power cut too
            if not existing:
                connection.execute("BEGIN IMMEDIATE")
                if not _check_meta(connection, path):  # another process may have created it meanwhile
                    for statement in _SCHEMA.split(";\n"):
                        if statement.strip():
                            connection.execute(statement)
                    connection.executemany("INSERT INTO meta VALUES (?, ?)",
                                           [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION)),
                                            ("created", str(time.time()))])
                connection.execute("COMMIT")
        except MonitoringError:
            connection.close()
            raise
        except sqlite3.Error as exc:
            connection.close()
            if "not a database" in str(exc):
                raise _not_ours(path, f"SQLite: {exc}") from None
            raise MonitoringError(f"Cannot write the request log {str(path)!r}: {exc}.") from None
        return cls(connection, path)

    @classmethod
    def open_readonly(cls, path: str | Path) -> MonitoringStore | None:
        """Open ``path`` for reading; None when the file does not exist (nothing was recorded yet)."""
        path = Path(path).expanduser()
        if not path.exists():
            return None
        if path.is_dir():
            raise MonitoringError(f"The request log path {str(path)!r} is a folder; set monitoring.path to a file.")
        try:
            connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False, timeout=10)
            if not _check_meta(connection, path):
                connection.close()
                return None
        except sqlite3.Error as exc:
            raise _not_ours(path, f"SQLite: {exc}") from None
        return cls(connection, path)

    def close(self) -> None:
        """Close the connection (a writer's WAL is checkpointed into the main file by SQLite)."""
        self.connection.close()

    # -- writing ---------------------------------------------------------------------------------------
    def insert(self, requests: Sequence[Sequence[Any]], events: Sequence[Sequence[Any]]) -> None:
        """Write rows (tuples in ``REQUEST_COLUMNS`` / ``EVENT_COLUMNS`` order) in one transaction."""
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            if requests:
                connection.executemany(
                    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})",
                    requests)
            if events:
                connection.executemany(f"INSERT INTO adapter_events ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?)", events)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def apply_retention(self, max_age_days: float | None, max_rows: int | None, now: float | None = None) -> int:
        """Delete rows older than ``max_age_days`` and all but the newest ``max_rows`` of each table; return the count."""
        now = time.time() if now is None else now
        deleted = 0
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            for table in ("requests", "adapter_events"):
                if max_age_days is not None:
                    deleted += connection.execute(f"DELETE FROM {table} WHERE time < ?", (now - max_age_days * 86400,)).rowcount
                if max_rows is not None:
                    deleted += connection.execute(
                        f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (max_rows,)).rowcount
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return deleted

    # -- reading ---------------------------------------------------------------------------------------
    def _select(self, table: str, columns: Iterable[str], since: float | None, where: str = "",
                args: tuple = ()) -> list[dict[str, Any]]:
        columns = ("id", *columns)
        clauses, values = [], []
        if since is not None:
            clauses.append("time >= ?")
            values.append(since)
        if where:
            clauses.append(where)
            values.extend(args)
        sql = f"SELECT {', '.join(columns)} FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        try:
            rows = self.connection.execute(sql + " ORDER BY id", values).fetchall()
        except sqlite3.Error as exc:
            raise MonitoringError(f"Cannot read the request log {str(self.path)!r}: {exc}.") from None
        return [dict(zip(columns, row)) for row in rows]

    def requests(self, since: float | None = None, adapter: str | None = None) -> list[dict[str, Any]]:
        """Request rows (oldest first) since Unix time ``since``; ``adapter``: rows that used that adapter
        (``None``: all; ``""``: the base model only). JSON columns come back decoded."""
        where, args = "", ()
        if adapter == "":
            where, args = "adapter_label = ?", (BASE_LABEL,)
        elif adapter is not None:
            where, args = "EXISTS (SELECT 1 FROM json_each(requests.adapters) WHERE json_each.value = ?)", (adapter,)
        rows = self._select("requests", REQUEST_COLUMNS, since, where, args)
        for row in rows:
            for column in _JSON_COLUMNS:
                if row[column] is not None:
                    row[column] = json.loads(row[column])
        return rows

    def events(self, since: float | None = None, adapter: str | None = None) -> list[dict[str, Any]]:
        """Adapter load/unload/evict rows (oldest first), optionally for one adapter."""
        where, args = ("adapter = ?", (adapter,)) if adapter else ("", ())
        return self._select("adapter_events", EVENT_COLUMNS, since, where, args)
