"""Redis backend: control state shared by any number of gateway replicas.

Layout (prefix `gw:` by default):
- `state` hash key -> JSON document; `epoch` counter; `audit` list of change entries;
- `replicas` sorted set replica -> last heartbeat (ms); `applied` hash replica -> epoch;
- `c:{coll}` hash id -> JSON and `ci:{coll}` sorted set id -> insertion sequence;
- channels `changes` (every control change), `acks` (a replica applied an epoch),
  `t:{topic}` (messages between replicas).

Each control write is one Lua script: compare, bump the epoch, store, audit and publish
happen atomically, so epochs are published in order and a replica that sees a gap knows
it missed something and resynchronises.
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

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry

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

log = logging.getLogger("gateway.store")

# KEYS: state, epoch, audit, channel   ARGV: key, doc json (an object), expect rev or "", audit json or ""
_PUT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  local rev = 0
  if cur then rev = tonumber(cjson.decode(cur)['rev']) or 0 end
  if rev ~= tonumber(ARGV[3]) then return {0, cur or ''} end
end
local epoch = redis.call('INCR', KEYS[2])
local body = string.sub(ARGV[2], 2)
local sep = ','
if body == '}' then sep = '' end
local stored = '{"rev":' .. epoch .. sep .. body
redis.call('HSET', KEYS[1], ARGV[1], stored)
if ARGV[4] ~= '' then
  local a = string.sub(ARGV[4], 2)
  local asep = ','
  if a == '}' then asep = '' end
  redis.call('RPUSH', KEYS[3], '{"epoch":' .. epoch .. ',"key":' .. cjson.encode(ARGV[1]) .. asep .. a)
end
redis.call('PUBLISH', KEYS[4], epoch .. '\\n' .. ARGV[1] .. '\\n' .. stored)
return {epoch, stored}
"""

# KEYS: coll hash, status index prefix   ARGV: id, doc json, expect json
_UPDATE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {0, ''} end
local doc = cjson.decode(cur)
for k, v in pairs(cjson.decode(ARGV[3])) do
  if doc[k] ~= v then return {0, cur} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local new = cjson.decode(ARGV[2])
if doc['status'] ~= new['status'] then
  local score = nil
  if type(doc['status']) == 'string' then
    score = redis.call('ZSCORE', KEYS[2] .. doc['status'], ARGV[1])
    redis.call('ZREM', KEYS[2] .. doc['status'], ARGV[1])
  end
  if type(new['status']) == 'string' then
    if not score then score = redis.call('TIME')[1] end
    redis.call('ZADD', KEYS[2] .. new['status'], score, ARGV[1])
  end
end
return {1, ''}
"""

# KEYS: coll hash, index zset, seq counter, status index prefix   ARGV: id, doc json
_INSERT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {0, redis.call('HGET', KEYS[1], ARGV[1])} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local status = cjson.decode(ARGV[2])['status']
if type(status) == 'string' then redis.call('ZADD', KEYS[4] .. status, seq, ARGV[1]) end
return {1, ''}
"""



class RedisStore(Store):
    shared = True

    def __init__(self, url: str, *, prefix: str = "gw:", liveness: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self.liveness = liveness
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # One quick retry: after a Redis restart the pooled connections are dead, a new one is not.
        self._redis = aioredis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=0,
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
        )
        self._put = self._redis.register_script(_PUT)
        self._update = self._redis.register_script(_UPDATE)
        self._insert = self._redis.register_script(_INSERT)
        self._on_change: ChangeListener | None = None
        self._topics: dict[str, list[TopicListener]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._acked: dict[str, int] = {}
        self._ack_event = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._closing = False

    def _k(self, name: str) -> str:
        return self.prefix + name

    # lifecycle -----------------------------------------------------------------
    async def open(self, on_change: ChangeListener) -> Snapshot:
        self._on_change = on_change
        self._listener = asyncio.create_task(self._listen(), name="gateway-redis-listener")
        try:
            await asyncio.wait_for(self._subscribed.wait(), 5.0)
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"cannot subscribe to Redis at {self.url}") from None
        return await self.snapshot()

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self._redis.zrem(self._k("replicas"), self.replica_id)
        except RedisError:
            pass
        await self._redis.aclose()

    async def _listen(self) -> None:
        """Receive changes, acks and topic messages; reconnect and resync after a loss."""
        delay = 0.05
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._k("changes"), self._k("acks"))
                await pubsub.psubscribe(self._k("t:*"))
                self._subscribed.set()
                if delay > 0.05 and self._on_change is not None:
                    self._on_change(Resync())  # reconnected: whatever was published meanwhile is lost
                delay = 0.05
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                await _quietly(pubsub.aclose())
                raise
            except (RedisError, OSError) as exc:
                log.warning("redis subscription lost (%s); reconnecting", exc.__class__.__name__)
                await _quietly(pubsub.aclose())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

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
        result = await self._call(self._put(keys=keys, args=args))
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
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._k("replicas"), {self.replica_id: now_ms})
            pipe.hset(self._k("applied"), self.replica_id, applied_epoch)
            pipe.get(self._k("epoch"))
            pipe.zremrangebyscore(self._k("replicas"), 0, now_ms - 3_600_000)
            result = await self._call(pipe.execute())
        return int(result[2] or 0)

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
        result = await self._call(self._insert(keys=keys, args=[id, dumps(doc)]))
        if result[0] == 0:
            raise StaleWrite(json.loads(result[1]))

    async def insert_many(self, coll: str, docs: list[dict[str, Any]]) -> None:
        keys = [self._k(f"c:{coll}"), self._k(f"ci:{coll}"), self._k(f"cseq:{coll}"), self._k(f"cs:{coll}:")]
        async with self._redis.pipeline(transaction=False) as pipe:
            for doc in docs:
                await self._insert(keys=keys, args=[doc["id"], dumps(doc)], client=pipe)
            await self._call(pipe.execute())

    async def get(self, coll: str, id: str) -> dict[str, Any] | None:
        raw = await self._call(self._redis.hget(self._k(f"c:{coll}"), id))
        return json.loads(raw) if raw else None

    async def update(self, coll: str, id: str, doc: dict[str, Any], *, expect: dict[str, Any]) -> None:
        keys = [self._k(f"c:{coll}"), self._k(f"cs:{coll}:")]
        result = await self._call(self._update(keys=keys, args=[id, dumps(doc), json.dumps(expect)]))
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
        doc = await self.get(coll, id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k(f"c:{coll}"), id).zrem(self._k(f"ci:{coll}"), id)
            if doc is not None and isinstance(doc.get("status"), str):
                pipe.zrem(self._k(f"cs:{coll}:{doc['status']}"), id)
            await self._call(pipe.execute())

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

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise StoreUnavailable(f"Redis at {self.url}: {exc}") from None


def _ms(seconds: float) -> int:
    """A TTL in milliseconds (PEXPIRE, SET PX): sub-second lifetimes mean what they say."""
    return max(1, int(seconds * 1000))


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        pass
