"""Separate gateway processes over real HTTP: shared state on Redis, durable state embedded."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.store.redis import RedisStore
from tests.support import GatewayProcess, auth, free_port, start_demo, write_config


@pytest.fixture(scope="module")
def second_demo():
    model = start_demo("--name", "demo-v2")
    yield model
    model.stop()


def _predict(url: str) -> httpx.Response:
    return httpx.post(f"{url}/models/demo/predict", json={"applicant": {"id": "r1"}}, headers=auth("client"), timeout=10)


def test_two_gateways_on_one_redis_see_the_same_change(tmp_path, redis_url, demo, second_demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url, "v2": second_demo.url}}, store=redis_url)
    replicas = [GatewayProcess(config, free_port()).start(), GatewayProcess(config, free_port()).start()]
    try:
        for replica in replicas:
            r = _predict(replica.url)
            assert r.status_code == 200 and r.headers["x-model-version"] == "v1", replica.log()

        async def switch():
            store = RedisStore(redis_url)
            await store.open(lambda change: None)
            try:
                current = (await store.snapshot()).docs["active/demo"]
                await store.put("active/demo", {"version": "v2", "actor": "test", "reason": "switch"}, expect_rev=current["rev"])
            finally:
                await store.close()

        import asyncio

        asyncio.run(switch())
        deadline = time.monotonic() + 2
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = [_predict(replica.url).headers["x-model-version"] for replica in replicas]
            if seen == ["v2", "v2"]:
                break
            time.sleep(0.01)
        assert seen == ["v2", "v2"]
        assert _predict(replicas[0].url).json()["model"] == "demo-v2"
    finally:
        for replica in replicas:
            replica.stop()


def test_embedded_state_survives_a_restart(tmp_path, demo, second_demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url, "v2": second_demo.url}})
    gateway = GatewayProcess(config, free_port()).start()
    try:
        assert _predict(gateway.url).headers["x-model-version"] == "v1"
    finally:
        assert gateway.stop() in (0, -15)  # uvicorn re-raises the SIGTERM it handled gracefully
    assert "Traceback" not in gateway.log()
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "state.sqlite3")  # an operator's earlier switch, as the store holds it
    doc = '{"version":"v2","actor":"ops","reason":"r","rev":99}'
    db.execute("UPDATE state SET doc=?, rev=99 WHERE key='active/demo'", (doc,))
    db.commit()
    db.close()
    gateway.start()
    try:
        assert _predict(gateway.url).headers["x-model-version"] == "v2"
    finally:
        gateway.stop()


def test_a_gateway_whose_store_is_unreachable_does_not_start(tmp_path, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, store=f"redis://127.0.0.1:{free_port()}/0")
    gateway = GatewayProcess(config, free_port())
    with pytest.raises(RuntimeError):
        gateway.start(timeout=15)
    assert gateway.proc.wait(5) != 0
    log = gateway.log()
    assert "gateway failed to start" in log and "Traceback" not in log
