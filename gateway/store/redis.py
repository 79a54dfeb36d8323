"""Redis backend: control state shared by any number of gateway replicas.

One server, a master watched by Sentinels, or a Cluster (`gateway.store.redis_targets`).
Layout (prefix `gw:`; `{gw}:` in a Cluster, one hash tag so every script stays on one slot):
- `state` hash key -> JSON document; `epoch` counter; `audit` list of change entries;
- `replicas` sorted set replica -> last heartbeat (ms); `applied` hash replica -> epoch;
- `c:{coll}` hash id -> JSON and `ci:{coll}` sorted set id -> insertion sequence;
- channels `changes` (every control change), `acks` (a replica applied an epoch),
  `t:{topic}` (messages between replicas).

Each control write is one Lua script: compare, bump the epoch, store, audit and publish
happen atomically, so epochs are published in order and a replica that sees a gap knows
it missed something and resynchronises.

Acknowledged writes — control changes and collection documents (tickets, decisions,
incidents) — are followed by `WAIT replicas_to_ack`: confirmed on that many Redis replicas,
or refused (`StoreUnavailable`), so a failover cannot lose what the gateway acknowledged.
The heartbeat waits too: a master no replica follows does not confirm the control state.

Any failure of a call, and the loss of the subscription, is reported to `on_unavailable`
(the mirror fails closed at once); the client finds a promoted master by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry

from gateway.store import redis_scripts as scripts
from gateway.store.redis_targets import connect, parse_target
from gateway.store.base import (
    Change,
    ChangeListener,
    Confirmation,
    Resync,
    Snapshot,
    StaleWrite,
    Store,
    StoreUnavailable,
    TopicListener,
    dumps,
)

_CLOSE_SECONDS = 2.0  # the longest a clean-up call on close may take
log = logging.getLogger("gateway.store")

# What a call to Redis can fail with. Besides the client's own errors: an OSError it did
# not wrap, and the RuntimeError uvloop raises for a write on a connection the peer just
# closed (the master died between connecting and the first command): each means the
# call did not happen, so each is the store being unavailable, never a 500.
FAILURES = (RedisError, OSError, RuntimeError)

class RedisStore(Store):
    shared = True

    def __init__(self, url: str, *, prefix: str | None = None, liveness: float = 2.0, replicas_to_ack: int = 0,
                 ack_timeout: float = 1.0) -> None:
        self.target = parse_target(url)
        self.url = self.target.where  # what messages name: never the password
        self.prefix = prefix or ("{gw}:" if self.target.kind == "cluster" else "gw:")
        self.liveness = liveness
        self.replicas_to_ack = replicas_to_ack
        self.ack_timeout = ack_timeout
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # One quick retry: after a Redis restart the pooled connections are dead, a new one is not.
        self._redis = connect(self.target, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=0,
                              retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
        self._put = self._redis.register_script(scripts.PUT)
        self._update = self._redis.register_script(scripts.UPDATE)
        self._insert = self._redis.register_script(scripts.INSERT)
        self._delete = self._redis.register_script(scripts.DELETE)
        self._on_change: ChangeListener | None = None
        self.on_unavailable: Callable[[str], None] | None = None
        self._topics: dict[str, list[TopicListener]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._acked: dict[str, int] = {}
        self._ack_event = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._heard = 0.0  # when the feed last delivered anything (or subscribed)
        self._closing = False

    def _k(self, name: str) -> str:
        return self.prefix + name

    # lifecycle -----------------------------------------------------------------
    async def open(self, on_change: ChangeListener) -> Snapshot:
        self._on_change = on_change
        if self.target.kind == "cluster":
            await self._call(self._redis.initialize())  # learn the slots before subscribing on the tag's node
        self._listener = asyncio.create_task(self._listen(), name="gateway-redis-listener")
        try:
            await asyncio.wait_for(self._subscribed.wait(), 5.0)
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"cannot subscribe to {self.url}") from None
        return await self.snapshot()

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener], timeout=_CLOSE_SECONDS)  # a listener stuck in a dead socket is left behind
        await _quietly(self._redis.zrem(self._k("replicas"), self.replica_id))
        await _quietly(self._redis.aclose())

    async def _listen(self, resync: bool = False) -> None:
        """Receive changes, acks and topic messages; reconnect and resync after a loss.

        Losing the subscription is a store failure like any other (`on_unavailable`): a
        killed master shows first here, often before any call fails, and the feed that
        would carry a raised level is gone. Reconnecting goes through the client, so
        after a failover it subscribes on the promoted master. A subscription that hangs
        without failing (its master froze) is replaced by the heartbeat (`_check_feed`).
        """
        delay = 0.05
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            subscribed = False
            try:
                await pubsub.subscribe(self._k("changes"), self._k("acks"))
                await pubsub.psubscribe(self._k("t:*"))
                subscribed = True
                self._heard = time.monotonic()
                self._subscribed.set()
                if (resync or delay > 0.05) and self._on_change is not None:
                    self._on_change(Resync())  # reconnected: whatever was published meanwhile is lost
                resync, delay = False, 0.05
                while True:
                    message = await pubsub.get_message(timeout=None)
                    self._heard = time.monotonic()
                    if message is not None:
                        try:
                            self._dispatch(message)
                        except Exception:  # one bad message or listener must not end the feed for good
                            log.exception("a message from %s could not be handled", message.get("channel"))
            except asyncio.CancelledError:
                await _quietly(pubsub.aclose())
                raise
            except FAILURES as exc:
                await _quietly(pubsub.aclose())
                if self._closing:
                    break
                if subscribed:
                    log.warning("redis subscription lost (%s); reconnecting", exc.__class__.__name__)
                    self._unavailable(f"{self.url}: subscription lost ({exc})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        data: bytes = message["data"]
        if channel == self._k("changes"):
            epoch, key, doc = data.split(b"\n", 2)
            if self._on_change is not None:
                self._on_change(Change(int(epoch), key.decode(), json.loads(doc)))
        elif channel == self._k("acks"):
            replica, epoch = data.decode().rsplit(" ", 1)
            if int(epoch) > self._acked.get(replica, 0):
                self._acked[replica] = int(epoch)
                self._ack_event.set()
        else:
            topic = channel[len(self._k("t:")) :]
            for listener in list(self._topics.get(topic, ())):
                listener(json.loads(data))

    async def durability_problems(self) -> list[str]:
        """Why writes acknowledged now might not survive a Redis restart or failover (empty: none found)."""
        problems = []
        try:
            nodes = await self._masters()
            for where, client in nodes:
                config = {**await client.config_get("appendonly"), **await client.config_get("appendfsync"),
                          **await client.config_get("save")}
                if config.get("appendonly") != "yes":
                    saves = config.get("save") or ""
                    snapshots = f"snapshots only ({saves!r})" if saves else "no snapshots either"
                    problems.append(f"{where} keeps no append-only file (appendonly no; {snapshots}): held tickets, "
                                    f"decisions and incidents written since its last snapshot are lost if it restarts; "
                                    f"set appendonly yes")
                elif config.get("appendfsync") == "no":
                    problems.append(f"{where} leaves fsync to the kernel (appendfsync no): the last ~30s of writes "
                                    f"can be lost on a power cut; set appendfsync everysec or always")
                if self.replicas_to_ack:
                    info = await client.info("replication")
                    if int(info.get("connected_slaves", 0)) < self.replicas_to_ack:
                        problems.append(f"{where} has {info.get('connected_slaves', 0)} connected replica(s) and "
                                        f"writes must reach {self.replicas_to_ack}: they are refused until one connects")
        except FAILURES as exc:
            problems.append(f"cannot read the persistence settings of {self.url} ({exc}); check them by hand")
        return problems

    async def _masters(self) -> list[tuple[str, Any]]:
        if self.target.kind == "cluster":
            return [(f"Redis Cluster node {node.host}:{node.port}", self._redis.get_redis_connection(node))
                    for node in self._redis.get_primaries()]
        return [(self.url, self._redis)]

    # control state --------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        async with self._redis.pipeline(transaction=True) as pipe:
            epoch, docs = await self._call(pipe.get(self._k("epoch")).hgetall(self._k("state")).execute())
        return Snapshot(int(epoch or 0), {k.decode(): json.loads(v) for k, v in docs.items()})

    async def put(
        self,
        key: str,
        doc: dict[str, Any],
        *,
        expect_rev: int | None = None,
        audit: dict[str, Any] | None = None,
    ) -> Change:
        doc = {k: v for k, v in doc.items() if k != "rev"}
        args = [key, dumps(doc), "" if expect_rev is None else str(expect_rev), "" if audit is None else dumps(audit)]
        keys = [self._k("state"), self._k("epoch"), self._k("audit"), self._k("changes")]
        (result,) = await self._acknowledged(self._put, [(keys, args)])
        if result[0] == 0:
            raise StaleWrite(json.loads(result[1]) if result[1] else None)
        return Change(int(result[0]), key, json.loads(result[1]))

    async def audit_log(self, *, key_prefix: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        end, step = -1, 500
        while len(out) < limit:
            batch = await self._call(self._redis.lrange(self._k("audit"), end - step + 1, end))
            if not batch:
                break
            for raw in reversed(batch):
                entry = json.loads(raw)
                if not key_prefix or entry["key"].startswith(key_prefix):
                    out.append(entry)
                    if len(out) >= limit:
                        break
            if len(batch) < step:
                break
            end -= step
        return out

    # replicas -------------------------------------------------------------------
    async def confirm(self, applied_epoch: int) -> int:
        """Heartbeat; with `replicas_to_ack`, it confirms only on a master that its replicas follow.

        The heartbeat's own writes are followed by `WAIT`, as acknowledged writes are: a
        master that no replica acknowledges cannot acknowledge a ticket, and may be one cut
        off from the sentinels, who promoted another (its levels are then not the fleet's).
        Refusing here keeps the replica failing closed until a replica is in sync again,
        instead of recovering on every heartbeat and failing closed again on the next
        refused write.
        """
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._k("replicas"), {self.replica_id: now_ms})
            pipe.hset(self._k("applied"), self.replica_id, applied_epoch)
            pipe.get(self._k("epoch"))
            pipe.zremrangebyscore(self._k("replicas"), 0, now_ms - 3_600_000)
            if self._waits:
                pipe.execute_command("WAIT", self.replicas_to_ack, _ms(self._heartbeat_wait))
            result = await self._call(pipe.execute())
        if self._waits and int(result[4]) < self.replicas_to_ack:
            raise self._unavailable(f"{self.url}: {result[4]} of the {self.replicas_to_ack} Redis replica(s) that must "
                                    f"confirm writes follow the master, so nothing can be acknowledged and its state "
                                    f"is not confirmed")
        # on the feed too, so this replica's own subscription hears something every heartbeat (a Cluster
        # pipelines no PUBLISH, hence a call of its own)
        await self._call(self._redis.publish(self._k("acks"), f"{self.replica_id} {applied_epoch}"))
        self._check_feed()
        return int(result[2] or 0)

    def _check_feed(self) -> None:
        """The store answers, yet the feed has not delivered even our own heartbeats: subscribe again.

        A subscription blocks on its connection without a timeout; when its master froze
        or was cut off (not killed: no reset arrives), it waits forever on the old master
        while the sentinels promote another, and this replica would hear no change, and
        no other replica's confirmation, again. Called after each heartbeat that went
        through, which published on the feed.
        """
        silent = time.monotonic() - self._heard
        if self._listener is None or self._closing or not self._subscribed.is_set() or silent < max(0.5, self.liveness):
            return
        log.warning("the change feed of %s delivered nothing for %.1fs while the store answers; subscribing again",
                    self.url, silent)
        self._listener.cancel()
        self._heard = time.monotonic()
        self._listener = asyncio.create_task(self._listen(resync=True), name="gateway-redis-listener")

    @property
    def _waits(self) -> bool:
        return bool(self.replicas_to_ack) and self.target.kind != "cluster"

    @property
    def _heartbeat_wait(self) -> float:
        """How long a heartbeat waits for replicas: within its own deadline (two intervals of max_staleness / 4)."""
        return min(self.ack_timeout, max(0.05, self.liveness / 4))

    async def report_applied(self, epoch: int) -> None:
        if epoch > self._acked.get(self.replica_id, 0):
            self._acked[self.replica_id] = epoch
            self._ack_event.set()
        await self._call(self._redis.publish(self._k("acks"), f"{self.replica_id} {epoch}"))

    async def _live_replicas(self) -> list[str]:
        since = int((time.time() - self.liveness) * 1000)
        members = await self._redis.zrangebyscore(self._k("replicas"), since, "+inf")
        return [m.decode() for m in members]

    async def wait_applied(self, epoch: int, timeout: float) -> Confirmation:
        deadline = time.monotonic() + timeout
        replicas = await self._call(self._live_replicas())
        if self.replica_id not in replicas:
            replicas.append(self.replica_id)
        stored = await self._call(self._redis.hmget(self._k("applied"), replicas))
        for rid, value in zip(replicas, stored):
            if value is not None and int(value) > self._acked.get(rid, 0):
                self._acked[rid] = int(value)
        while True:
            done = [r for r in replicas if self._acked.get(r, 0) >= epoch]
            remaining = deadline - time.monotonic()
            if len(done) == len(replicas) or remaining <= 0:
                return Confirmation(epoch, applied_by=sorted(done), replicas=sorted(replicas))
            self._ack_event.clear()
            try:
                await asyncio.wait_for(self._ack_event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # collections ----------------------------------------------------------------
    async def insert(self, coll: str, id: str, doc: dict[str, Any]) -> None:
        keys = [self._k(f"c:{coll}"), self._k(f"ci:{coll}"), self._k(f"cseq:{coll}"), self._k(f"cs:{coll}:")]
        (result,) = await self._acknowledged(self._insert, [(keys, [id, dumps(doc)])])
        if result[0] == 0:
            raise StaleWrite(json.loads(result[1]))

    async def insert_many(self, coll: str, docs: list[dict[str, Any]]) -> None:
        keys = [self._k(f"c:{coll}"), self._k(f"ci:{coll}"), self._k(f"cseq:{coll}"), self._k(f"cs:{coll}:")]
        if docs:
            await self._acknowledged(self._insert, [(keys, [doc["id"], dumps(doc)]) for doc in docs])

    async def get(self, coll: str, id: str) -> dict[str, Any] | None:
        raw = await self._call(self._redis.hget(self._k(f"c:{coll}"), id))
        return json.loads(raw) if raw else None

    async def update(self, coll: str, id: str, doc: dict[str, Any], *, expect: dict[str, Any]) -> None:
        keys = [self._k(f"c:{coll}"), self._k(f"cs:{coll}:")]
        (result,) = await self._acknowledged(self._update, [(keys, [id, dumps(doc), json.dumps(expect)])])
        if result[0] == 0:
            raise StaleWrite(json.loads(result[1]) if result[1] else None)

    async def query(
        self, coll: str, *, where: dict[str, Any] | None = None, limit: int = 100, newest_first: bool = True
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start, step = 0, 200
        status = (where or {}).get("status")
        index = self._k(f"cs:{coll}:{status}") if isinstance(status, str) else self._k(f"ci:{coll}")
        while len(out) < limit:
            ids = await self._call(self._redis.zrange(index, start, start + step - 1, desc=newest_first))
            if not ids:
                break
            docs = await self._call(self._redis.hmget(self._k(f"c:{coll}"), ids))
            for raw in docs:
                if raw is None:
                    continue
                doc = json.loads(raw)
                if all(doc.get(k) == v for k, v in (where or {}).items()):
                    out.append(doc)
                    if len(out) >= limit:
                        break
            start += step
        return out

    async def delete(self, coll: str, id: str) -> None:
        keys = [self._k(f"c:{coll}"), self._k(f"ci:{coll}"), self._k(f"cs:{coll}:")]
        await self._acknowledged(self._delete, [(keys, [id])])

    # counters and short-lived facts ----------------------------------------------
    async def add_counts(self, counts: dict[str, dict[str, float]], ttl: float) -> None:
        if not counts:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, fields in counts.items():
                for name, amount in fields.items():
                    pipe.hincrbyfloat(self._k(f"n:{key}"), name, amount)
                pipe.pexpire(self._k(f"n:{key}"), _ms(ttl))
            await self._call(pipe.execute())

    async def read_counts(self, keys: list[str]) -> dict[str, dict[str, float]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self._k(f"n:{key}"))
            results = await self._call(pipe.execute())
        return {key: {name.decode(): float(value) for name, value in found.items()} for key, found in zip(keys, results)}

    async def remember(self, coll: str, items: dict[str, dict[str, Any]], ttl: float) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for id, doc in items.items():
                pipe.set(self._k(f"m:{coll}:{id}"), dumps(doc), px=_ms(ttl))
            await self._call(pipe.execute())

    async def recall(self, coll: str, id: str) -> dict[str, Any] | None:
        raw = await self._call(self._redis.get(self._k(f"m:{coll}:{id}")))
        return json.loads(raw) if raw else None

    # topics ---------------------------------------------------------------------
    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        await self._call(self._redis.publish(self._k(f"t:{topic}"), dumps(message)))

    def subscribe(self, topic: str, listener: TopicListener) -> Callable[[], None]:
        self._topics.setdefault(topic, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._topics.get(topic, [])
            if listener in listeners:
                listeners.remove(listener)

        return unsubscribe

    async def _acknowledged(self, script: Any, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        """Run `script` once per (keys, args); with `replicas_to_ack`, confirm the writes on that many replicas.

        `WAIT` follows the writes on the same connection (one pipeline), so it counts the
        replicas that have them. Fewer than asked within `ack_timeout`: the write is refused
        to its caller (it may still be on the master, which a failover can lose). A Cluster
        runs scripts one by one (it pipelines no EVALSHA) and never waits (see config).
        """
        try:
            if self.target.kind == "cluster" or (not self.replicas_to_ack and len(calls) == 1):
                return [await script(keys=keys, args=args) for keys, args in calls]
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await script(keys=keys, args=args, client=pipe)
                if self.replicas_to_ack:
                    pipe.execute_command("WAIT", self.replicas_to_ack, int(self.ack_timeout * 1000))
                results = await pipe.execute()
        except FAILURES as exc:
            raise self._unavailable(f"{self.url}: {exc}") from None
        if self.replicas_to_ack:
            acked = int(results.pop())
            if acked < self.replicas_to_ack:
                raise self._unavailable(f"{self.url}: the write reached {acked} of the {self.replicas_to_ack} Redis "
                                       f"replica(s) it must within {self.ack_timeout:g}s, so it is not acknowledged "
                                       f"(a failover now could lose it); retry")
        return results

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except FAILURES as exc:
            raise self._unavailable(f"{self.url}: {exc}") from None

    def _unavailable(self, message: str) -> StoreUnavailable:
        if self.on_unavailable is not None:
            self.on_unavailable(message)
        return StoreUnavailable(message)


def _ms(seconds: float) -> int:
    """A TTL in milliseconds (PEXPIRE, SET PX): sub-second lifetimes mean what they say."""
    return max(1, int(seconds * 1000))


async def _quietly(awaitable: Any) -> None:
    """Run a clean-up call and ignore its failure; bounded, so a closing store never waits on a dead server."""
    try:
        await asyncio.wait_for(awaitable, _CLOSE_SECONDS)
    except Exception:  # asyncio.TimeoutError among them
        pass
