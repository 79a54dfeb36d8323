"""What only the shared backend does: several replicas, confirmation, reconnection."""

from __future__ import annotations

import asyncio
import time

from gateway.store import Change, Resync
from gateway.store.redis import RedisStore
from tests.support import eventually


async def _open(url: str, seen: list[Change] | None = None, liveness: float = 2.0) -> RedisStore:
    store = RedisStore(url, liveness=liveness)
    await store.open((seen if seen is not None else []).append)
    return store


async def test_a_change_on_one_replica_reaches_the_other(redis_url):
    seen: list[Change] = []
    a, b = await _open(redis_url), await _open(redis_url, seen)
    try:
        change = await a.put("level/model/demo", {"level": 4}, audit={"actor": "ops"})
        found = await eventually(lambda: _async([c for c in seen if c.epoch == change.epoch]))
        assert found[0].doc == {"level": 4, "rev": change.epoch}
    finally:
        await a.close()
        await b.close()


async def test_wait_applied_counts_live_replicas_and_names_the_silent_one(redis_url):
    a, b, c = await _open(redis_url), await _open(redis_url), await _open(redis_url)
    try:
        change = await a.put("level/global", {"level": 4})
        for store in (a, b, c):
            await store.confirm(change.epoch - 1)
        await a.report_applied(change.epoch)
        await b.report_applied(change.epoch)  # c stays silent
        started = time.monotonic()
        confirmation = await a.wait_applied(change.epoch, timeout=0.3)
        assert time.monotonic() - started >= 0.29
        assert sorted(confirmation.applied_by) == sorted([a.replica_id, b.replica_id])
        assert confirmation.missing == [c.replica_id]
        assert confirmation.as_dict()["unconfirmed"] == [c.replica_id]
        await c.report_applied(change.epoch)
        confirmation = await a.wait_applied(change.epoch, timeout=1.0)
        assert confirmation.missing == []
    finally:
        for store in (a, b, c):
            await store.close()


async def test_a_replica_that_stopped_heartbeating_is_not_waited_for(redis_url):
    a, gone = await _open(redis_url, liveness=0.3), await _open(redis_url)
    try:
        await gone.confirm(0)
        await asyncio.sleep(0.4)
        change = await a.put("level/global", {"level": 1})
        await a.confirm(change.epoch)
        await a.report_applied(change.epoch)
        confirmation = await a.wait_applied(change.epoch, timeout=1.0)
        assert confirmation.replicas == [a.replica_id]
    finally:
        await a.close()
        await gone.close()


async def test_the_subscription_comes_back_after_redis_restarts(own_redis):
    seen: list[Change] = []
    store = await _open(own_redis.url, seen)
    try:
        own_redis.stop()
        await asyncio.sleep(0.2)
        own_redis.start()
        await eventually(lambda: _async(any(isinstance(c, Resync) for c in seen)), timeout=10)
        change = await store.put("level/global", {"level": 2})
        await eventually(lambda: _async(any(isinstance(c, Change) and c.epoch == change.epoch for c in seen)), timeout=5)
    finally:
        await store.close()


async def _async(value):
    return value
