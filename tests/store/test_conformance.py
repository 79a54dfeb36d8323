"""One contract, every backend: each test here runs against the embedded store (alone, and shared by the
workers of one machine), one Redis server, a Sentinel-watched master with two replicas (writes confirmed
on one of them), and a 3-master Cluster. The `pair` tests run two replicas on one store: two embedded
stores on one file (as two workers have them), two clients of one Redis, Sentinel set or Cluster."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import Change, StaleWrite, Store
from gateway.store.embedded import EmbeddedStore
from gateway.store.redis import RedisStore
from tests.support import eventually


BACKENDS = ["embedded", "embedded-shared", "redis", "sentinel", "cluster"]


def _make(kind: str, request, tmp_path, liveness: float = 2.0) -> Store:
    if kind == "embedded":
        return EmbeddedStore(tmp_path / "state.sqlite3")
    if kind == "embedded-shared":
        return EmbeddedStore(tmp_path / "state.sqlite3", shared=True, liveness=liveness)
    if kind == "redis":
        return RedisStore(request.getfixturevalue("redis_url"), liveness=liveness)
    if kind == "sentinel":
        return RedisStore(request.getfixturevalue("sentinel_url"), replicas_to_ack=1, liveness=liveness)
    return RedisStore(request.getfixturevalue("cluster_url"), liveness=liveness)


async def _opened(s: Store) -> Store:
    changes: list[Change] = []
    await s.open(changes.append)
    s.seen = changes  # type: ignore[attr-defined]
    return s


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    s = await _opened(_make(request.param, request, tmp_path))
    yield s
    await s.close()


@pytest.fixture(params=BACKENDS[1:])
async def pair(request, tmp_path):
    """Two replicas on one store, each counting a replica live for 0.5 s after its last heartbeat."""
    a = await _opened(_make(request.param, request, tmp_path, liveness=0.5))
    b = await _opened(_make(request.param, request, tmp_path, liveness=0.5))
    yield a, b
    await a.close()
    await b.close()


async def test_put_bumps_the_epoch_and_stamps_rev(store):
    first = await store.put("level/global", {"level": 1})
    second = await store.put("level/model/demo", {"level": 3})
    assert second.epoch == first.epoch + 1
    snap = await store.snapshot()
    assert snap.epoch == second.epoch
    assert snap.docs["level/global"] == {"level": 1, "rev": first.epoch}
    assert snap.docs["level/model/demo"]["rev"] == second.epoch


async def test_every_change_reaches_the_listener_in_order(store):
    for level in range(4):
        await store.put("level/global", {"level": level})
    await eventually(lambda: _async(len(store.seen) >= 4))
    assert [c.doc["level"] for c in store.seen] == [0, 1, 2, 3]
    assert [c.epoch for c in store.seen] == sorted(c.epoch for c in store.seen)


async def test_compare_and_set_refuses_a_stale_write(store):
    created = await store.put("active/demo", {"version": "v1"}, expect_rev=0)
    with pytest.raises(StaleWrite) as refused:
        await store.put("active/demo", {"version": "v2"}, expect_rev=0)
    assert refused.value.current["version"] == "v1"
    await store.put("active/demo", {"version": "v2"}, expect_rev=created.epoch)
    with pytest.raises(StaleWrite):
        await store.put("active/demo", {"version": "v3"}, expect_rev=created.epoch)
    assert (await store.snapshot()).docs["active/demo"]["version"] == "v2"


async def test_concurrent_compare_and_set_has_exactly_one_winner(store):
    base = await store.put("active/demo", {"version": "v1"})
    results = await asyncio.gather(
        *(store.put("active/demo", {"version": f"v{i}"}, expect_rev=base.epoch) for i in range(2, 12)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Change)]
    assert len(winners) == 1
    assert all(isinstance(r, StaleWrite) for r in results if not isinstance(r, Change))


async def test_audit_log_keeps_who_and_why_newest_first(store):
    await store.put("level/global", {"level": 2}, audit={"actor": "ops-1", "reason": "drill"})
    await store.put("level/model/demo", {"level": 4}, audit={"actor": "ops-2", "reason": "kill"})
    await store.put("level/global", {"level": 0}, audit={"actor": "ops-1", "reason": "done"})
    entries = await store.audit_log()
    assert [e["reason"] for e in entries] == ["done", "kill", "drill"]
    assert [e["actor"] for e in await store.audit_log(key_prefix="level/global")] == ["ops-1", "ops-1"]
    assert (await store.audit_log(limit=1))[0]["key"] == "level/global"


async def test_collections_insert_get_update_query_delete(store):
    await store.insert("tickets", "t1", {"id": "t1", "status": "pending", "model": "a"})
    await store.insert("tickets", "t2", {"id": "t2", "status": "pending", "model": "b"})
    await store.insert("tickets", "t3", {"id": "t3", "status": "decided", "model": "a"})
    with pytest.raises(StaleWrite):
        await store.insert("tickets", "t1", {"id": "t1"})
    assert (await store.get("tickets", "t2"))["model"] == "b"
    assert await store.get("tickets", "nope") is None
    pending = await store.query("tickets", where={"status": "pending"})
    assert [d["id"] for d in pending] == ["t2", "t1"]
    oldest_first = await store.query("tickets", newest_first=False, limit=2)
    assert [d["id"] for d in oldest_first] == ["t1", "t2"]
    await store.update("tickets", "t1", {"id": "t1", "status": "decided", "model": "a"}, expect={"status": "pending"})
    with pytest.raises(StaleWrite) as refused:
        await store.update("tickets", "t1", {"id": "t1", "status": "rejected"}, expect={"status": "pending"})
    assert refused.value.current["status"] == "decided"
    assert [d["id"] for d in await store.query("tickets", where={"status": "decided", "model": "a"})] == ["t3", "t1"]
    await store.delete("tickets", "t3")
    assert await store.get("tickets", "t3") is None


async def test_concurrent_updates_have_exactly_one_winner(store):
    await store.insert("tickets", "t", {"id": "t", "status": "pending"})
    results = await asyncio.gather(
        *(store.update("tickets", "t", {"id": "t", "status": "decided", "by": i}, expect={"status": "pending"}) for i in range(8)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1


async def test_topics_deliver_messages(store):
    got: list[dict] = []
    witness: list[dict] = []
    unsubscribe = store.subscribe("decisions", got.append)
    store.subscribe("decisions", witness.append)
    await store.publish("decisions", {"ticket": "t1"})
    await eventually(lambda: _async(got))
    unsubscribe()
    await store.publish("decisions", {"ticket": "t2"})
    await eventually(lambda: _async(len(witness) == 2))  # delivered in order: t2 reached this replica
    assert got == [{"ticket": "t1"}]


async def test_a_replica_confirms_what_it_applied(store):
    change = await store.put("level/global", {"level": 4})
    await store.confirm(change.epoch)
    await store.report_applied(change.epoch)
    confirmation = await store.wait_applied(change.epoch, timeout=1.0)
    assert confirmation.replicas == [store.replica_id]
    assert confirmation.applied_by == [store.replica_id]
    assert confirmation.missing == []


async def test_state_survives_reopening(store, tmp_path, request):
    await store.put("level/global", {"level": 3})
    await store.insert("tickets", "t1", {"id": "t1"})
    await store.close()
    reopened = (EmbeddedStore(tmp_path / "state.sqlite3", shared=store.shared) if isinstance(store, EmbeddedStore)
                else RedisStore(store.target.url, replicas_to_ack=store.replicas_to_ack))
    snap = await reopened.open(lambda change: None)
    try:
        assert snap.docs["level/global"]["level"] == 3
        assert await reopened.get("tickets", "t1") == {"id": "t1"}
    finally:
        await reopened.close()
        # the fixture closes `store` again: give it a fresh one to close
        store.close = _noop  # type: ignore[method-assign]


async def _async(value):
    return value


async def _noop():
    return None


async def test_status_queries_follow_status_changes(store):
    for i in range(5):
        await store.insert("tickets", f"t{i}", {"id": f"t{i}", "status": "pending"})
    await store.update("tickets", "t1", {"id": "t1", "status": "decided"}, expect={"status": "pending"})
    await store.update("tickets", "t3", {"id": "t3", "status": "decided"}, expect={"status": "pending"})
    await store.delete("tickets", "t4")
    pending = await store.query("tickets", where={"status": "pending"}, newest_first=False)
    assert [d["id"] for d in pending] == ["t0", "t2"]
    decided = await store.query("tickets", where={"status": "decided"}, newest_first=False)
    assert [d["id"] for d in decided] == ["t1", "t3"]
    assert [d["id"] for d in await store.query("tickets", where={"status": "pending"}, limit=1)] == ["t2"]


async def test_insert_many_adds_a_batch_and_leaves_existing_ids_alone(store):
    await store.insert("tickets", "t0", {"id": "t0", "status": "pending", "n": 0})
    await store.insert_many("tickets", [{"id": f"t{i}", "status": "pending", "n": 1} for i in range(4)])
    docs = await store.query("tickets", where={"status": "pending"}, newest_first=False)
    assert [(d["id"], d["n"]) for d in docs] == [("t0", 0), ("t1", 1), ("t2", 1), ("t3", 1)]


async def test_counts_add_up_across_writers_and_expire(store):
    await store.add_counts({"demo|v1|100": {"requests": 3, "errors": 1}, "demo|v1|160": {"requests": 2}}, ttl=60)
    await store.add_counts({"demo|v1|100": {"requests": 4, "latency_sum": 0.25}}, ttl=60)
    counts = await store.read_counts(["demo|v1|100", "demo|v1|160", "demo|v1|220"])
    assert counts == {"demo|v1|100": {"requests": 7, "errors": 1, "latency_sum": 0.25}, "demo|v1|160": {"requests": 2},
                      "demo|v1|220": {}}
    await store.add_counts({"short": {"n": 1}}, ttl=0.2)
    await asyncio.sleep(0.3)
    assert (await store.read_counts(["short"]))["short"] == {}


async def test_remembered_facts_are_recalled_until_they_expire(store):
    await store.remember("decisions", {"r1": {"caller": "c1", "group": "A"}, "r2": {"caller": "c2"}}, ttl=60)
    assert await store.recall("decisions", "r1") == {"caller": "c1", "group": "A"}
    assert await store.recall("decisions", "nope") is None
    await store.remember("decisions", {"r3": {"caller": "c3"}}, ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.recall("decisions", "r3") is None


# two replicas on one store -------------------------------------------------------------
async def test_a_change_on_one_replica_reaches_the_other(pair):
    a, b = pair
    first = await a.put("level/model/demo", {"level": 4})
    second = await b.put("level/global", {"level": 1})
    await eventually(lambda: _async([c.epoch for c in b.seen if c.epoch == first.epoch]), timeout=2)
    await eventually(lambda: _async([c.epoch for c in a.seen if c.epoch == second.epoch]), timeout=2)
    assert next(c for c in b.seen if c.epoch == first.epoch).doc == {"level": 4, "rev": first.epoch}
    assert (await a.snapshot()).docs == (await b.snapshot()).docs


async def test_a_change_waits_for_every_live_replica(pair):
    a, b = pair
    change = await a.put("level/global", {"level": 4})
    await a.confirm(change.epoch)
    await b.confirm(0)  # alive, and has not applied it yet
    await a.report_applied(change.epoch)
    waiting = await a.wait_applied(change.epoch, timeout=0.2)
    assert (waiting.replicas, waiting.applied_by) == (sorted([a.replica_id, b.replica_id]), [a.replica_id])
    assert waiting.missing == [b.replica_id] and waiting.as_dict()["unconfirmed"] == [b.replica_id]
    confirmation = asyncio.create_task(a.wait_applied(change.epoch, timeout=2.0))
    await asyncio.sleep(0.05)
    await b.report_applied(change.epoch)
    done = await confirmation
    assert done.applied_by == done.replicas == sorted([a.replica_id, b.replica_id])
    assert done.as_dict() == {"epoch": change.epoch, "applied_by": 2, "replicas": 2}


async def test_a_replica_that_stopped_beating_or_left_is_not_waited_for(pair):
    a, b = pair
    change = await a.put("level/global", {"level": 4})
    await a.report_applied(change.epoch)
    await b.confirm(0)
    assert (await a.wait_applied(change.epoch, timeout=0.05)).missing == [b.replica_id]
    await asyncio.sleep(0.6)  # b's heartbeat is older than the liveness (0.5 s) now
    await a.confirm(change.epoch)
    assert (await a.wait_applied(change.epoch, timeout=1.0)).replicas == [a.replica_id]
    await b.confirm(0)
    await b.close()  # a replica that leaves says so
    b.close = _noop  # type: ignore[method-assign]
    assert (await a.wait_applied(change.epoch, timeout=1.0)).replicas == [a.replica_id]


async def test_messages_reach_the_other_replica_once(pair):
    a, b = pair
    at_a: list[dict] = []
    at_b: list[dict] = []
    a.subscribe("decisions", at_a.append)
    b.subscribe("decisions", at_b.append)
    await a.publish("decisions", {"ticket": "t1"})
    await b.publish("decisions", {"ticket": "t2"})
    await eventually(lambda: _async(len(at_a) == 2 and len(at_b) == 2), timeout=2)
    await asyncio.sleep(0.1)  # nothing arrives twice
    assert sorted(m["ticket"] for m in at_a) == sorted(m["ticket"] for m in at_b) == ["t1", "t2"]


async def test_compare_and_set_across_replicas_has_exactly_one_winner(pair):
    a, b = pair
    base = await a.put("active/demo", {"version": "v1"})
    results = await asyncio.gather(
        *(s.put("active/demo", {"version": f"v{i}"}, expect_rev=base.epoch) for i, s in enumerate([a, b] * 5, start=2)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Change) for r in results) == 1
    assert all(isinstance(r, StaleWrite) for r in results if not isinstance(r, Change))
    await store_agrees(a, b)


async def test_updates_across_replicas_have_exactly_one_winner(pair):
    a, b = pair
    await a.insert("tickets", "t", {"id": "t", "status": "pending"})
    results = await asyncio.gather(
        *(s.update("tickets", "t", {"id": "t", "status": "decided", "by": i}, expect={"status": "pending"})
          for i, s in enumerate([a, b] * 4)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert (await b.get("tickets", "t"))["status"] == "decided"


async def store_agrees(a, b) -> None:
    snap_a, snap_b = await a.snapshot(), await b.snapshot()
    assert snap_a == snap_b
