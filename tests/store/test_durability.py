"""What the gateway acknowledges stays acknowledged: persistence checked at start, replicas confirm writes.

Real `redis-server` processes: one without an append-only file (its default here), one
with, and a Sentinel-watched master with two replicas.
"""

from __future__ import annotations

import httpx
import pytest

from gateway.store import StoreUnavailable
from gateway.store.redis import RedisStore
from tests.support import GatewayProcess, RedisServer, auth, free_port, write_config

APPLICANT = {"applicant": {"id": "d-1", "group": "A"}}


async def test_a_redis_without_an_append_only_file_is_named_at_start(own_redis):
    store = RedisStore(own_redis.url)
    (problem,) = await store.durability_problems()
    assert "appendonly no" in problem and "lost if it restarts" in problem
    await store.close()


async def test_a_redis_with_an_append_only_file_passes(tmp_path):
    server = RedisServer(free_port(), tmp_path / "aof", args=("--appendonly", "yes")).start()
    try:
        store = RedisStore(server.url)
        assert await store.durability_problems() == []
        await store.close()
    finally:
        server.stop()


def test_the_policy_can_refuse_a_volatile_store(tmp_path, own_redis, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, store=own_redis.url,
                          policy={"oversight": {"on_volatile_store": "refuse"}})
    gateway = GatewayProcess(config, free_port())
    with pytest.raises(RuntimeError, match="exited"):
        gateway.start(timeout=15)
    log = gateway.log()
    assert "refusing to start (oversight.on_volatile_store: refuse)" in log and "appendonly no" in log
    assert "Traceback" not in log


def test_tickets_acknowledged_on_an_append_only_redis_survive_its_kill(tmp_path, demo):
    server = RedisServer(free_port(), tmp_path / "redis", args=("--appendonly", "yes")).start()
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, store=server.url,
                          policy={"oversight": {"initial_level": 3, "max_staleness": "1s"}})
    gateway = GatewayProcess(config, free_port()).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            held = [client.post("/models/demo/predict", json={"applicant": {"id": f"k-{i}"}}, headers=auth("client"))
                    for i in range(3)]
            assert [r.status_code for r in held] == [202] * 3
            server.kill()  # SIGKILL, as in the measurement that lost all three without an append-only file
            server.start()
            for r in held:
                ticket = r.json()["ticket"]
                seen = client.get(f"/review/tickets/{ticket}", headers=auth("reviewer"))
                assert seen.status_code == 200 and seen.json()["status"] == "pending", seen.text
                decided = client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve"},
                                      headers=auth("reviewer"))
                assert decided.status_code == 200, decided.text
        assert "appendonly no" not in gateway.log()
    finally:
        gateway.stop()
        server.stop()


async def test_a_write_that_too_few_replicas_confirm_is_refused(sentinel_url, redis_sentinel):
    store = RedisStore(sentinel_url, replicas_to_ack=3)  # two replicas exist
    await store.open(lambda change: None)
    try:
        with pytest.raises(StoreUnavailable, match="reached 2 of the 3 Redis replica"):
            await store.insert("tickets", "t1", {"id": "t1", "status": "pending"})
        assert any("2 connected replica(s) and writes must reach 3" in p for p in await store.durability_problems())
    finally:
        await store.close()


async def test_a_confirmed_write_is_on_a_replica_when_it_returns(sentinel_url, redis_sentinel):
    import redis

    store = RedisStore(sentinel_url, replicas_to_ack=2)
    await store.open(lambda change: None)
    try:
        await store.insert("tickets", "t2", {"id": "t2", "status": "pending"})
        replicas = [s for s in redis_sentinel.servers if s.proc is not None and s.port != redis_sentinel.master_port()]
        for replica in replicas:  # both have it the moment the call returned
            assert redis.Redis(port=replica.port).hget("gw:c:tickets", "t2") is not None
    finally:
        await store.close()
