"""The fine-tuning database: uploaded files, jobs and their events in one SQLite file under `$HOTLORA_HOME`.

The standard library's `sqlite3` in WAL mode: readers never wait for a write, and a commit appends to the
log without waiting for the disk (`synchronous=NORMAL`: a power cut may lose the last commits, never the
file). One connection, shared by the worker threads the HTTP layer sends its calls to, behind a lock (the
calls are short: a row or a page of rows). Rows keep their insertion order in `seq`, which pagination
follows.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hotlora_adapters.private import create_private_file, make_private_dirs

FILENAME = "fine_tuning.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    format TEXT NOT NULL,
    rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    adapter_name TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    hyperparameters TEXT NOT NULL,
    options TEXT NOT NULL,
    metadata TEXT,
    error TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""

JSON_COLUMNS = frozenset({"hyperparameters", "options", "metadata", "error", "result", "data"})


def new_id(prefix: str) -> str:
    """A random id in OpenAI's style (`file-…`, `ftjob-…`): 24 hex digits after the prefix."""
    return f"{prefix}-{secrets.token_hex(12)}"


class Database:
    """The SQLite file in `folder` (0700; the file 0600), created on first use."""

    def __init__(self, folder: Path) -> None:
        make_private_dirs(folder)
        self.path = folder / FILENAME
        try:  # 0600 from the start: SQLite gives its -wal and -shm files the database file's mode
            os.close(create_private_file(self.path))
        except FileExistsError:
            pass
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside `BEGIN IMMEDIATE … COMMIT` (rolled back on an exception)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, JSON columns decoded."""
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [decode(row) for row in rows]

    def page(
        self,
        table: str,
        where: str,
        params: Sequence[Any],
        after: str | None,
        limit: int,
        *,
        newest_first: bool,
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """Up to `limit` rows of `table` matching `where`, in `seq` order, after the row whose id is
        `after`; and whether more follow. None when `after` names no such row."""
        clauses, args = [where], list(params)
        with self._lock:
            if after is not None:
                found = self._conn.execute(f"SELECT seq FROM {table} WHERE id = ?", (after,)).fetchone()
                if found is None:
                    return None
                clauses.append("seq < ?" if newest_first else "seq > ?")
                args.append(found["seq"])
            order = "DESC" if newest_first else "ASC"
            sql = f"SELECT * FROM {table} WHERE {' AND '.join(clauses)} ORDER BY seq {order} LIMIT ?"
            rows = self._conn.execute(sql, [*args, limit + 1]).fetchall()
        return [decode(row) for row in rows[:limit]], len(rows) > limit


def encode(value: Any) -> str | None:
    """A JSON column's text (None stays NULL)."""
    return None if value is None else json.dumps(value, allow_nan=False)


def decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out
