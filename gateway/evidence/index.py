"""The find/select index: a small SQLite file derived from the segments.

It maps leaf index -> (segment, offset) for `get`, and request id, time and
model to leaf indexes for `find`/`select`. It holds no bodies and no secrets, is
written off the request path in batches, and can always be rebuilt from the
segments, so it is not part of what `verify` trusts.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterable, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER PRIMARY KEY,
    seg INTEGER NOT NULL,
    off INTEGER NOT NULL,
    time REAL,
    request_id TEXT,
    model TEXT
);
CREATE INDEX IF NOT EXISTS records_request ON records(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_time ON records(time);
CREATE INDEX IF NOT EXISTS records_model_time ON records(model, time);
"""


class Row(NamedTuple):
    idx: int
    seg: int
    off: int
    time: float | None
    request_id: str | None
    model: str | None


def row_for(idx: int, seg: int, off: int, record: dict, appended: float) -> Row:
    """Index only well-typed fields (the record is otherwise opaque); no "time" means append time."""
    when = record.get("time", appended)
    rid = record.get("request_id")
    model = record.get("model")
    return Row(
        idx, seg, off,
        float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else appended,
        rid if isinstance(rid, str) else None,
        model if isinstance(model, str) else None,
    )


class Index:
    """One connection shared under a lock: writes come in batches from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = self._reader() if readonly else self._connect()

    def _reader(self) -> sqlite3.Connection:
        """Queries only, on an index another process writes: never created, repaired or changed from here."""
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no index (the log's writer has not built it yet)")
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        db.execute("PRAGMA query_only=ON")
        return db

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM records").fetchone()
            return db
        except sqlite3.DatabaseError:
            # Derived data: a damaged index is discarded and rebuilt from the segments.
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            return db

    def add(self, rows: Iterable[Row]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)", rows)
            self._db.execute("COMMIT")

    def next_index(self) -> int:
        with self._lock:
            (top,) = self._db.execute("SELECT max(idx) FROM records").fetchone()
        return -1 if top is None else top + 1

    def has_at_or_after(self, seg: int, off: int) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM records WHERE seg=? AND off>=? LIMIT 1", (seg, off)).fetchone() is not None

    def drop_from(self, idx: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE idx>=?", (idx,))

    def drop_segment(self, seg: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE seg=?", (seg,))

    def locate(self, idx: int) -> tuple[int, int] | None:
        with self._lock:
            row = self._db.execute("SELECT seg, off FROM records WHERE idx=?", (idx,)).fetchone()
        return None if row is None else (row[0], row[1])

    def find(self, request_id: str) -> list[int]:
        with self._lock:
            rows = self._db.execute("SELECT idx FROM records WHERE request_id=? ORDER BY idx", (request_id,)).fetchall()
        return [r[0] for r in rows]

    def select(self, since: float | None, until: float | None, model: str | None) -> list[int]:
        sql, args = "SELECT idx FROM records WHERE 1=1", []
        if since is not None:
            sql += " AND time>=?"
            args.append(since)
        if until is not None:
            sql += " AND time<?"
            args.append(until)
        if model is not None:
            sql += " AND model=?"
            args.append(model)
        with self._lock:
            return [r[0] for r in self._db.execute(sql + " ORDER BY idx", args).fetchall()]

    def segment_times(self) -> dict[int, tuple[float | None, float | None]]:
        with self._lock:
            rows = self._db.execute("SELECT seg, min(time), max(time) FROM records GROUP BY seg").fetchall()
        return {seg: (lo, hi) for seg, lo, hi in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
