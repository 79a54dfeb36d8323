"""The Redis store across a lost master: it says so at once, follows the promoted one, and never confirms a
master that its replicas do not follow.

Real `redis-server` processes: one server this test kills, the session's Sentinel set (a
master, two replicas, three sentinels), and a Sentinel set of the test's own for a failover.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.control.state import ControlState
from gateway.store import StoreUnavailable
from gateway.store.redis import RedisStore
from tests.redis_topologies import SentinelSet
from tests.support import eventually


def _mirror(store: RedisStore, max_staleness: float) -> ControlState:
    return ControlState(store, initial_level=0, max_staleness=max_staleness, on_state_loss=4)


async def _true(value):
    return value


async def test_a_killed_redis_fails_the_mirror_closed_before_any_heartbeat_or_call(own_redis):
    """The subscription sees the master go first; waiting for the next heartbeat (5 s here) or a failed call
    would let requests reach models meanwhile at the levels last seen."""
    state = _mirror(RedisStore(own_redis.url), max_staleness=20.0)
    await state.start()
    try:
        await asyncio.sleep(0.3)  # the first heartbeat is done; the next is 5 s away
        assert state.level_for("demo") == 0
        own_redis.kill()  # SIGKILL
        lost = time.monotonic()
        await eventually(lambda: _true(state.level_for("demo") == 4), timeout=1.0, interval=0.005)
        assert time.monotonic() - lost < 0.5
    finally:
        await state.stop()


async def test_a_master_its_replicas_do_not_follow_is_never_confirmed(sentinel_url, redis_sentinel):
    """Three replicas must confirm and two exist: the mirror starts, fails closed, and stays so (no flapping
    between heartbeats that confirm and writes that are refused)."""
    state = _mirror(RedisStore(sentinel_url, replicas_to_ack=3, ack_timeout=0.2), max_staleness=0.4)
    await state.start()
    try:
        seen = set()
        deadline = time.monotonic() + 1.5  # more than a dozen heartbeats
        while time.monotonic() < deadline:
            seen.add(state.level_for("demo"))
            await asyncio.sleep(0.01)
        assert seen == {4}
        with pytest.raises(StoreUnavailable, match="2 of the 3 Redis replica"):
            await state.store.confirm(state.epoch)
    finally:
        await state.stop()


async def test_a_master_its_replicas_follow_is_confirmed(sentinel_url, redis_sentinel):
    state = _mirror(RedisStore(sentinel_url, replicas_to_ack=2), max_staleness=0.4)
    await state.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert state.level_for("demo") == 0
            await asyncio.sleep(0.02)
    finally:
        await state.stop()


async def test_after_a_failover_the_store_writes_to_the_promoted_master_and_hears_it(tmp_path):
    """kill -9 of the master: calls fail fast (never hang on the dead one), then go to the promoted master
    without being told, its feed included; what was confirmed on a replica before the kill is there."""
    topology = SentinelSet(tmp_path, replicas=2, down_after_ms=500).start()
    heard = []
    store = RedisStore(topology.url, replicas_to_ack=1)
    other = RedisStore(topology.url, replicas_to_ack=1)
    try:
        await store.open(heard.append)
        await other.open(lambda change: None)
        await store.insert("tickets", "before", {"id": "before", "status": "pending"})
        old = topology.kill_master()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get("tickets", "before")
        assert time.monotonic() - started < 1.0

        async def written() -> bool:
            try:
                await other.insert("tickets", "after", {"id": "after", "status": "pending"})
                return True
            except StoreUnavailable:
                return False

        await eventually(written, timeout=20, interval=0.1)
        # the sentinels do not switch at the same instant: wait until the first one asked names the new master too
        assert await asyncio.to_thread(topology.wait_failover, old, 10.0) != old
        assert await store.get("tickets", "before") is not None  # confirmed on a replica, so on the promoted one

        async def feed() -> bool:
            await other.put("level/global", {"level": 2})
            await asyncio.sleep(0.05)
            return any(getattr(c, "key", None) == "level/global" for c in heard)

        await eventually(feed, timeout=5, interval=0.2)
    finally:
        await store.close()
        await other.close()
        topology.stop()


async def test_after_a_frozen_master_is_replaced_the_feed_follows_the_promoted_one(tmp_path):
    """SIGSTOP, not SIGKILL: no reset ever comes from the old master, so a subscription would wait on it
    forever (heartbeats would still bring changes, but no replica would hear another confirm one). The
    heartbeat sees its own beats go unheard and subscribes again, on the promoted master."""
    import os
    import signal

    topology = SentinelSet(tmp_path, replicas=2, down_after_ms=500).start()
    a, b = (ControlState(RedisStore(topology.url, replicas_to_ack=1, liveness=0.5), initial_level=0,
                         max_staleness=0.5, on_state_loss=4) for _ in range(2))
    frozen = topology.server_on(topology.master_port())
    try:
        await a.start()
        await b.start()
        os.kill(frozen.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

        async def confirmed_by_both() -> bool:
            try:
                _, confirmation = await a.change("level/global", {"level": 2}, audit={}, confirm_timeout=1.0)
            except StoreUnavailable:
                return False
            return confirmation.missing == [] and len(confirmation.replicas) == 2

        await eventually(confirmed_by_both, timeout=30, interval=0.3)
        assert b.level_for("demo") == 2
    finally:
        if frozen.proc is not None:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        await a.stop()
        await b.stop()
        topology.stop()


async def test_a_transport_failure_the_client_does_not_wrap_is_the_store_unavailable():
    """uvloop raises RuntimeError for a write on a connection the dying master just closed; it was a 500."""
    store = RedisStore("redis://127.0.0.1:1/0")
    told = []
    store.on_unavailable = told.append

    async def closed():
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    with pytest.raises(StoreUnavailable, match="the handler is closed"):
        await store._call(closed())
    assert told and "the handler is closed" in told[0]
