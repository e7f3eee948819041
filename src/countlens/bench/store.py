"""The durable record store: SQLite in WAL mode, one committed transaction per finished batch.

`kill -9` at any moment loses no committed record (WAL + synchronous=FULL) and never duplicates
one (the key is the primary key). API-error records are kept, so summaries count them, and
replaced when a rerun gets an answer; finished records are never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from countlens.bench.records import STATUS_OK, Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    example_id TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL
)"""


class RecordStore:
    """Used from one thread (the runner's); backends hand results back to that thread."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)

    def finished(self, keys: Iterable[str]) -> set[str]:
        """Keys already answered (status ok); API errors are not finished and are asked again."""
        return {k for k, in self._select("SELECT key FROM records WHERE status = ? AND key IN ({})", keys,
                                         (STATUS_OK,))}

    def get(self, keys: Iterable[str]) -> dict[str, Record]:
        return {k: Record.from_json(d) for k, d in self._select("SELECT key, data FROM records WHERE key IN ({})",
                                                                  keys)}

    def put(self, records: Iterable[Record]) -> None:
        """Store records in one transaction; an existing finished record always wins."""
        rows = [(r.key, r.model, r.example_id, r.status, r.to_json()) for r in records]
        if not rows:
            return
        with self._tx():
            self.db.executemany(
                "INSERT INTO records (key, model, example_id, status, data) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status = excluded.status, data = excluded.data "
                "WHERE records.status != 'ok'", rows)

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def _select(self, sql: str, keys: Iterable[str], params: tuple = ()):
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            yield from self.db.execute(sql.format(",".join("?" * len(chunk))), (*params, *chunk))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
