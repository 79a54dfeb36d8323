"""The in-memory mirror of control state: what the request path reads, and failing closed."""

from __future__ import annotations

import asyncio

import pytest

from gateway.control.state import ControlState
from gateway.store.embedded import EmbeddedStore
from gateway.store.redis import RedisStore
from tests.support import eventually


def _mirror(store, max_staleness: float = 2.0) -> ControlState:
    return ControlState(store, initial_level=0, max_staleness=max_staleness, on_state_loss=4)


async def _true(value):
    return value


async def test_effective_level_is_the_higher_of_global_and_model(tmp_path):
    state = _mirror(EmbeddedStore(tmp_path / "s.db"))
    await state.start()
    try:
        assert state.level_for("demo") == 0
        await state.change("level/model/demo", {"level": 2}, audit={})
        assert (state.level_for("demo"), state.level_for("other")) == (2, 0)
        await state.change("level/global", {"level": 3}, audit={})
        assert (state.level_for("demo"), state.level_for("other")) == (3, 3)
        await state.change("level/global", {"level": 1}, audit={})
        assert (state.level_for("demo"), state.level_for("other")) == (2, 1)
    finally:
        await state.stop()


async def test_the_embedded_store_never_goes_stale(tmp_path):
    state = _mirror(EmbeddedStore(tmp_path / "s.db"), max_staleness=0.05)
    await state.start()
    try:
        await asyncio.sleep(0.2)
        assert not state.is_stale()
        assert state.level_for("demo") == 0
    finally:
        await state.stop()


async def test_replicas_mirror_each_others_changes_and_confirm_them(redis_url):
    a, b = _mirror(RedisStore(redis_url)), _mirror(RedisStore(redis_url))
    await a.start()
    await b.start()
    try:
        change, confirmation = await a.change("level/model/demo", {"level": 4}, audit={"actor": "ops"})
        assert confirmation.missing == []
        assert (confirmation.as_dict()["applied_by"], confirmation.as_dict()["replicas"]) == (2, 2)
        assert b.level_for("demo") == 4  # applied before the change answered
        assert b.epoch == change.epoch
    finally:
        await a.stop()
        await b.stop()


async def test_a_missed_change_is_repaired_by_resync(redis_url):
    state = _mirror(RedisStore(redis_url), max_staleness=0.4)
    await state.start()
    writer = RedisStore(redis_url)
    await writer.open(lambda c: None)
    try:
        state.store._on_change = lambda c: None  # this replica hears nothing from now on
        await writer.put("level/global", {"level": 3})
        await eventually(lambda: _true(state.level_for("demo") == 3), timeout=5)  # resync every 0.4 s; slack for a loaded machine
    finally:
        await writer.close()
        await state.stop()


async def test_losing_the_store_fails_closed_and_recovers(own_redis):
    state = _mirror(RedisStore(own_redis.url), max_staleness=0.5)
    await state.start()
    try:
        assert state.level_for("demo") == 0
        own_redis.stop()
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        await eventually(lambda: _true(state.level_for("demo") == 4), timeout=3)
        assert loop.time() - lost_at <= 0.5 + 1.0
        own_redis.start()  # an empty Redis: the mirror keeps its state and confirms again
        await eventually(lambda: _true(state.level_for("demo") == 0), timeout=5)
    finally:
        await state.stop()


async def test_a_store_that_lost_its_data_gets_the_state_back(own_redis):
    state = _mirror(RedisStore(own_redis.url), max_staleness=0.4)
    await state.start()
    try:
        await state.change("level/model/demo", {"level": 4, "reason": "kill"}, audit={})
        await state.change("active/demo", {"version": "v2"}, audit={})
        own_redis.stop()
        own_redis.start()  # empty: no persistence in tests
        async def restored():
            snap = await state.store.snapshot()
            return snap.docs.get("level/model/demo", {}).get("level") == 4 and snap.docs.get("active/demo", {}).get("version") == "v2"
        await eventually(restored, timeout=5)
        await eventually(lambda: _true(not state.is_stale()), timeout=3)
        assert state.level_for("demo") == 4
        await state.change("level/model/demo", {"level": 1}, audit={})  # new epochs apply again
        assert state.level_for("demo") == 1
    finally:
        await state.stop()


@pytest.mark.parametrize("level", [0, 2, 4])
async def test_state_loss_never_lowers_a_level(own_redis, level):
    state = ControlState(RedisStore(own_redis.url), initial_level=0, max_staleness=0.3, on_state_loss=3)
    await state.start()
    try:
        await state.change("level/global", {"level": level}, audit={})
        own_redis.stop()
        await eventually(lambda: _true(state.is_stale()), timeout=3)
        assert state.level_for("demo") == max(level, 3)
    finally:
        await state.stop()


async def test_workers_on_one_embedded_file_mirror_each_others_changes_and_confirm_them(tmp_path):
    a = _mirror(EmbeddedStore(tmp_path / "s.db", shared=True))
    b = _mirror(EmbeddedStore(tmp_path / "s.db", shared=True))
    await a.start()
    await b.start()
    try:
        change, confirmation = await a.change("level/model/demo", {"level": 4}, audit={"actor": "ops"})
        assert confirmation.missing == []
        assert (confirmation.as_dict()["applied_by"], confirmation.as_dict()["replicas"]) == (2, 2)
        assert b.level_for("demo") == 4  # applied before the change answered
        assert b.epoch == change.epoch
        _, back = await b.change("level/model/demo", {"level": 1}, audit={"actor": "ops"})
        assert back.as_dict()["applied_by"] == 2 and a.level_for("demo") == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_worker_that_cannot_confirm_its_embedded_state_fails_closed_and_recovers(tmp_path):
    import sqlite3

    state = _mirror(EmbeddedStore(tmp_path / "s.db", shared=True), max_staleness=0.4)
    await state.start()
    try:
        assert state.level_for("demo") == 0
        lock = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the database: no heartbeat gets through
        try:
            await eventually(lambda: _true(state.level_for("demo") == 4), timeout=2)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        await eventually(lambda: _true(state.level_for("demo") == 0), timeout=8)
    finally:
        await state.stop()
