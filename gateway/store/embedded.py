"""Embedded backend: SQLite in the data folder, for one gateway process.

All SQLite work runs on one dedicated thread, so the event loop never blocks on disk and
the connection is never shared between threads. Writes commit with `synchronous=FULL`:
a change is on disk before the call that made it answers. With one process there is one
replica, which applies every change as it commits, so this store never goes stale.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.store.base import (
    Change,
    ChangeListener,
    Confirmation,
    Snapshot,
    StaleWrite,
    Store,
    StoreUnavailable,
    TopicListener,
    dumps,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, doc TEXT NOT NULL, rev INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (epoch INTEGER PRIMARY KEY, key TEXT NOT NULL, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, coll TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
    UNIQUE (coll, id)
);
CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, field));
CREATE TABLE IF NOT EXISTS remembered (coll TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (coll, id));
CREATE INDEX IF NOT EXISTS remembered_expiry ON remembered (expires);
CREATE INDEX IF NOT EXISTS counters_expiry ON counters (expires);
CREATE INDEX IF NOT EXISTS records_by_status ON records (coll, json_extract(doc, '$.status'), seq);
INSERT OR IGNORE INTO meta (name, value) VALUES ('epoch', 0);
"""



class EmbeddedStore(Store):
    on_unavailable = None  # a local file: its failures are errors, not an unknown state
    shared = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.replica_id = f"embedded-{uuid.uuid4().hex[:8]}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        self._db: sqlite3.Connection | None = None
        self._on_change: ChangeListener | None = None
        self._topics: dict[str, list[TopicListener]] = defaultdict(list)
        self._applied = 0

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"embedded store {self.path}: {exc}") from None

    # lifecycle -----------------------------------------------------------------
    async def open(self, on_change: ChangeListener) -> Snapshot:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db

        await self._run(connect)
        self._on_change = on_change
        snap = await self.snapshot()
        self._applied = snap.epoch
        return snap

    async def durability_problems(self) -> list[str]:
        return []  # SQLite in WAL mode on the data folder's disk: a committed write survives a crash

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(shut)
        self._executor.shutdown(wait=True)

    # control state --------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        def read() -> Snapshot:
            db = self._conn()
            with db:
                epoch = db.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()[0]
                docs = {key: json.loads(doc) for key, doc in db.execute("SELECT key, doc FROM state")}
            return Snapshot(epoch, docs)

        return await self._run(read)

    async def put(
        self,
        key: str,
        doc: dict[str, Any],
        *,
        expect_rev: int | None = None,
        audit: dict[str, Any] | None = None,
    ) -> Change:
        def write(db: sqlite3.Connection) -> Change:
            row = db.execute("SELECT doc, rev FROM state WHERE key=?", (key,)).fetchone()
            if expect_rev is not None and (row[1] if row else 0) != expect_rev:
                raise StaleWrite(json.loads(row[0]) if row else None)
            epoch = db.execute("UPDATE meta SET value=value+1 WHERE name='epoch' RETURNING value").fetchone()[0]
            stored = {**doc, "rev": epoch}
            db.execute(
                "INSERT INTO state (key, doc, rev) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET doc=excluded.doc, rev=excluded.rev",
                (key, dumps(stored), epoch),
            )
            if audit is not None:
                db.execute(
                    "INSERT INTO audit (epoch, key, entry) VALUES (?, ?, ?)",
                    (epoch, key, dumps({**audit, "epoch": epoch, "key": key})),
                )
            return Change(epoch, key, stored)

        change = await self._run(self._in_transaction, write)
        self._applied = max(self._applied, change.epoch)
        if self._on_change is not None:
            self._on_change(change)
        return change

    async def audit_log(self, *, key_prefix: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            rows = self._conn().execute(
                "SELECT entry FROM audit WHERE key LIKE ? ESCAPE '\\' ORDER BY epoch DESC LIMIT ?",
                (_like_prefix(key_prefix), limit),
            )
            return [json.loads(entry) for (entry,) in rows]

        return await self._run(read)

    # replicas -------------------------------------------------------------------
    async def confirm(self, applied_epoch: int) -> int:
        return (await self.snapshot()).epoch

    async def report_applied(self, epoch: int) -> None:
        self._applied = max(self._applied, epoch)

    async def wait_applied(self, epoch: int, timeout: float) -> Confirmation:
        me = [self.replica_id]
        return Confirmation(epoch, applied_by=me if self._applied >= epoch else [], replicas=me)

    # collections ----------------------------------------------------------------
    async def insert(self, coll: str, id: str, doc: dict[str, Any]) -> None:
        def write() -> None:
            try:
                self._conn().execute("INSERT INTO records (coll, id, doc) VALUES (?, ?, ?)", (coll, id, dumps(doc)))
            except sqlite3.IntegrityError:
                raise StaleWrite(self._get(coll, id)) from None

        await self._run(write)

    async def insert_many(self, coll: str, docs: list[dict[str, Any]]) -> None:
        def write(db: sqlite3.Connection) -> None:  # one transaction, one fsync, for the whole batch
            db.executemany("INSERT OR IGNORE INTO records (coll, id, doc) VALUES (?, ?, ?)",
                           [(coll, doc["id"], dumps(doc)) for doc in docs])

        await self._run(self._in_transaction, write)

    async def get(self, coll: str, id: str) -> dict[str, Any] | None:
        return await self._run(self._get, coll, id)

    def _get(self, coll: str, id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT doc FROM records WHERE coll=? AND id=?", (coll, id)).fetchone()
        return json.loads(row[0]) if row else None

    async def update(self, coll: str, id: str, doc: dict[str, Any], *, expect: dict[str, Any]) -> None:
        def write(db: sqlite3.Connection) -> None:
            current = self._get(coll, id)
            if current is None or any(current.get(k) != v for k, v in expect.items()):
                raise StaleWrite(current)
            db.execute("UPDATE records SET doc=? WHERE coll=? AND id=?", (dumps(doc), coll, id))

        await self._run(self._in_transaction, write)

    async def query(
        self, coll: str, *, where: dict[str, Any] | None = None, limit: int = 100, newest_first: bool = True
    ) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            sql = "SELECT doc FROM records WHERE coll=?"
            params: list[Any] = [coll]
            for name, value in (where or {}).items():
                if name == "status":  # the indexed field: spelled as the index spells it
                    sql += " AND json_extract(doc, '$.status') = ?"
                    params.append(value)
                else:
                    sql += " AND json_extract(doc, ?) IS ?"
                    params += [f"$.{name}", value]
            sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
            params.append(limit)
            return [json.loads(doc) for (doc,) in self._conn().execute(sql, params)]

        return await self._run(read)

    async def delete(self, coll: str, id: str) -> None:
        await self._run(lambda: self._conn().execute("DELETE FROM records WHERE coll=? AND id=?", (coll, id)))

    # counters and short-lived facts ----------------------------------------------
    async def add_counts(self, counts: dict[str, dict[str, float]], ttl: float) -> None:
        def write() -> None:
            now = time.time()
            rows = [(key, name, amount, now + ttl) for key, fields in counts.items() for name, amount in fields.items()]
            self._in_transaction(lambda db: (
                db.executemany("INSERT INTO counters (key, field, value, expires) VALUES (?, ?, ?, ?) ON CONFLICT(key, field) "
                               "DO UPDATE SET value = value + excluded.value, expires = excluded.expires", rows),
                db.execute("DELETE FROM counters WHERE expires < ?", (now,)),
            ))

        if counts:
            await self._run(write)

    async def read_counts(self, keys: list[str]) -> dict[str, dict[str, float]]:
        def read() -> dict[str, dict[str, float]]:
            out: dict[str, dict[str, float]] = {key: {} for key in keys}
            now = time.time()
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, name, value in self._conn().execute(
                        f"SELECT key, field, value FROM counters WHERE key IN ({marks}) AND expires >= ?", (*chunk, now)):
                    out[key][name] = value
            return out

        return await self._run(read)

    async def remember(self, coll: str, items: dict[str, dict[str, Any]], ttl: float) -> None:
        def write() -> None:
            now = time.time()
            rows = [(coll, id, dumps(doc), now + ttl) for id, doc in items.items()]
            self._in_transaction(lambda db: (
                db.executemany("INSERT OR REPLACE INTO remembered (coll, id, doc, expires) VALUES (?, ?, ?, ?)", rows),
                db.execute("DELETE FROM remembered WHERE expires < ?", (now,)),
            ))

        if items:
            await self._run(write)

    async def recall(self, coll: str, id: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            row = self._conn().execute("SELECT doc FROM remembered WHERE coll=? AND id=? AND expires >= ?",
                                       (coll, id, time.time())).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(read)

    def _in_transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work` in one write transaction: all of it commits, or none of it."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
            return result
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # topics ---------------------------------------------------------------------
    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        for listener in list(self._topics.get(topic, ())):
            listener(message)

    def subscribe(self, topic: str, listener: TopicListener) -> Callable[[], None]:
        self._topics[topic].append(listener)
        return lambda: self._topics[topic].remove(listener) if listener in self._topics[topic] else None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("embedded store is closed")
        return self._db


def _like_prefix(prefix: str | None) -> str:
    if not prefix:
        return "%"
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
