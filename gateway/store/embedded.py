"""Embedded backend: SQLite in the data folder, for one gateway process or the workers of one machine.

All SQLite work runs on one dedicated thread (`gateway.store.serial`), so the event loop
never blocks on disk and the connection is never shared between threads. Writes commit
with `synchronous=FULL`: a change is on disk before the call that made it answers. With
one process there is one replica, which applies every change as it commits, so this store
never goes stale.

Shared (`shared=True`: the workers of `gateway serve --workers N`, on one data folder),
the processes share the database in WAL mode and each behaves as a replica on Redis does:
- the change signal: every `POLL_INTERVAL`, between calls, the store's thread asks SQLite
  whether another connection committed (`PRAGMA data_version`: shared memory, no disk
  read, no wakeup of the event loop); when one did, the control documents written since
  go to the mirror as changes (a gap makes it resynchronise), and the messages other
  workers published (table `messages`) to this worker's subscribers;
- liveness: the mirror's heartbeat registers the worker in `replicas` (last seen, epoch
  applied), so `wait_applied` waits for every live worker, and a worker whose store calls
  fail or stall fails closed (`on_unavailable`, the heartbeat);
- heartbeats, acks and messages commit without fsync (`synchronous=NORMAL`): a power cut
  may lose them, and nothing depends on them surviving one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
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
from gateway.store.serial import SerialThread

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
CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, seen REAL NOT NULL, applied INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, origin TEXT NOT NULL,
    body TEXT NOT NULL, at REAL NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('epoch', 0);
"""

log = logging.getLogger("gateway.store")

POLL_INTERVAL = 0.01  # shared: how often a worker asks whether another one committed (about 1 % of a core)
MESSAGE_TTL = 60.0  # shared: messages between workers older than this are removed
FORGET_REPLICAS = 3600.0  # shared: a replica not seen for this long leaves the table


class EmbeddedStore(Store):
    on_unavailable = None  # alone: a local file's failures are errors, not an unknown state

    def __init__(self, path: Path, *, shared: bool = False, liveness: float = 2.0) -> None:
        self.path = Path(path)
        self.shared = shared
        self.liveness = liveness  # shared: a replica whose heartbeat is older is not waited for
        self.replica_id = f"embedded-{os.getpid()}-{uuid.uuid4().hex[:6]}" if shared else f"embedded-{uuid.uuid4().hex[:8]}"
        self._thread = SerialThread("gateway-sqlite")
        self._db: sqlite3.Connection | None = None
        self._on_change: ChangeListener | None = None
        self._topics: dict[str, list[TopicListener]] = defaultdict(list)
        self._applied = 0
        # shared: what the store's thread has seen of the other workers' commits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data_version = 0
        self._feed_epoch = 0
        self._message_seq = 0

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._thread.run(fn, *args)
        except sqlite3.OperationalError as exc:
            message = f"embedded store {self.path}: {exc}"
            if self.shared and self.on_unavailable is not None:
                self.on_unavailable(message)  # shared: another worker may have changed what we cannot read
            raise StoreUnavailable(message) from None

    # lifecycle -----------------------------------------------------------------
    async def open(self, on_change: ChangeListener) -> Snapshot:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")  # first: workers opening one file at once wait for each other
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
            if self.shared:
                self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
                self._message_seq = db.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]

        await self._run(connect)
        self._on_change = on_change
        snap = await self.snapshot()
        self._applied = self._feed_epoch = snap.epoch
        if self.shared:
            self._loop = asyncio.get_running_loop()
            self._thread.when_idle(self._follow, POLL_INTERVAL)
        return snap

    async def durability_problems(self) -> list[str]:
        return []  # SQLite in WAL mode on the data folder's disk: a committed write survives a crash

    async def close(self) -> None:
        self._thread.when_idle(None)

        def shut() -> None:
            if self._db is not None:
                if self.shared:  # leaving: writers stop waiting for this replica at once
                    try:
                        self._db.execute("DELETE FROM replicas WHERE id=?", (self.replica_id,))
                    except sqlite3.Error:
                        pass
                self._db.close()
                self._db = None

        await self._run(shut)
        self._thread.shutdown()

    # control state --------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        def read() -> Snapshot:
            db = self._conn()
            db.execute("BEGIN")  # one read transaction: the epoch and the documents as of one commit
            try:
                epoch = db.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()[0]
                docs = {key: json.loads(doc) for key, doc in db.execute("SELECT key, doc FROM state")}
            finally:
                db.execute("COMMIT")
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
        if not self.shared:
            return (await self.snapshot()).epoch

        def beat(db: sqlite3.Connection) -> int:
            now = time.time()
            db.execute("INSERT INTO replicas (id, seen, applied) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                       "SET seen=excluded.seen, applied=max(applied, excluded.applied)", (self.replica_id, now, applied_epoch))
            db.execute("DELETE FROM replicas WHERE seen < ?", (now - FORGET_REPLICAS,))
            db.execute("DELETE FROM messages WHERE at < ?", (now - MESSAGE_TTL,))
            return db.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()[0]

        return await self._run(self._unsynced, beat)

    async def report_applied(self, epoch: int) -> None:
        self._applied = max(self._applied, epoch)
        if self.shared:
            await self._run(self._unsynced, lambda db: db.execute(
                "INSERT INTO replicas (id, seen, applied) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                "SET applied=max(applied, excluded.applied)", (self.replica_id, time.time(), epoch)))

    async def wait_applied(self, epoch: int, timeout: float) -> Confirmation:
        me = [self.replica_id]
        if not self.shared:
            return Confirmation(epoch, applied_by=me if self._applied >= epoch else [], replicas=me)

        def live() -> dict[str, int]:
            rows = self._conn().execute("SELECT id, applied FROM replicas WHERE seen >= ?", (time.time() - self.liveness,))
            return dict(rows.fetchall())

        def applied(ids: list[str]) -> dict[str, int]:
            marks = ",".join("?" * len(ids))
            return dict(self._conn().execute(f"SELECT id, applied FROM replicas WHERE id IN ({marks})", ids).fetchall())

        started = time.monotonic()
        deadline = started + timeout
        seen = await self._run(live)  # who must confirm: the replicas alive now, and this one
        replicas = sorted(set(seen) | {self.replica_id})
        while True:
            seen[self.replica_id] = max(seen.get(self.replica_id, 0), self._applied)
            done = [r for r in replicas if seen.get(r, 0) >= epoch]
            now = time.monotonic()
            if len(done) == len(replicas) or now >= deadline:
                return Confirmation(epoch, applied_by=done, replicas=replicas)
            # every few ms while the others normally answer (one POLL_INTERVAL), then less often
            await asyncio.sleep(min(0.003 if now - started < 0.1 else 0.02, deadline - now))
            seen.update(await self._run(applied, replicas))

    # the other workers' commits (shared) ----------------------------------------
    def _follow(self) -> None:
        """On the store's thread, when idle: hand what other workers committed to the event loop."""
        try:
            changes, messages = self._poll()
        except sqlite3.OperationalError:
            return  # busy or failing: the mirror's heartbeat fails closed meanwhile and resynchronises after
        except Exception:
            log.exception("following the embedded store failed; trying again")
            return
        if (changes or messages) and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._hand_over, changes, messages)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _hand_over(self, changes: list[Change], messages: list[tuple[str, dict[str, Any]]]) -> None:
        for change in changes:
            if self._on_change is not None:
                self._on_change(change)
        for topic, message in messages:
            self._deliver(topic, message)

    def _poll(self) -> tuple[list[Change], list[tuple[str, dict[str, Any]]]]:
        db = self._conn()
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return [], []  # nobody else committed: the usual answer, from shared memory
        self._data_version = version
        changes: list[Change] = []
        db.execute("BEGIN")
        try:
            epoch = db.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()[0]
            if epoch > self._feed_epoch:
                rows = db.execute("SELECT key, doc, rev FROM state WHERE rev > ? ORDER BY rev", (self._feed_epoch,))
                changes = [Change(rev, key, json.loads(doc)) for key, doc, rev in rows]
                self._feed_epoch = epoch
            rows = db.execute("SELECT seq, topic, origin, body FROM messages WHERE seq > ? ORDER BY seq",
                              (self._message_seq,)).fetchall()
        finally:
            db.execute("COMMIT")
        if rows:
            self._message_seq = rows[-1][0]
        messages = [(topic, json.loads(body)) for _, topic, origin, body in rows if origin != self.replica_id]
        return changes, messages

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

    def _unsynced(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work` in one write transaction committed without fsync: for facts a power cut may lose (shared)."""
        db = self._conn()
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._in_transaction(work)
        finally:
            db.execute("PRAGMA synchronous=FULL")

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
        if self.shared:  # for the other workers' watchers
            await self._run(self._unsynced, lambda db: db.execute(
                "INSERT INTO messages (topic, origin, body, at) VALUES (?, ?, ?, ?)",
                (topic, self.replica_id, dumps(message), time.time())))
        self._deliver(topic, message)

    def _deliver(self, topic: str, message: dict[str, Any]) -> None:
        for listener in list(self._topics.get(topic, ())):
            try:
                listener(message)
            except Exception:
                log.exception("a listener of topic %s failed", topic)

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
