"""Levels and decisions across gateway processes sharing one Redis; failing closed without it."""

from __future__ import annotations

import threading
import time

import httpx

from tests.support import GatewayProcess, auth, free_port, write_config

APPLICANT = {"applicant": {"id": "rp-1"}}


def _post(url: str, **headers) -> httpx.Response:
    return httpx.post(f"{url}/models/demo/predict", json=APPLICANT, headers={**auth("client"), **headers}, timeout=30)


def test_a_decision_on_one_replica_wakes_the_client_waiting_on_another(tmp_path, redis_url, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, store=redis_url)
    a, b = GatewayProcess(config, free_port()).start(), GatewayProcess(config, free_port()).start()
    try:
        r = httpx.put(f"{a.url}/admin/oversight/models/demo", json={"level": 3, "reason": "review"}, headers=auth("operator"))
        assert r.json()["applied_by"] == 2 and r.json()["replicas"] == 2
        answer: dict = {}

        def client():
            answer["response"] = _post(a.url, prefer="wait=20")
            answer["at"] = time.monotonic()

        waiting = threading.Thread(target=client)
        waiting.start()
        deadline = time.monotonic() + 10
        tickets: list = []
        while not tickets and time.monotonic() < deadline:
            tickets = httpx.get(f"{b.url}/review/tickets", headers=auth("reviewer")).json()["tickets"]
            time.sleep(0.02)
        decided_at = time.monotonic()
        r = httpx.post(f"{b.url}/review/tickets/{tickets[0]['id']}/decision",
                       json={"action": "override", "response": {"decision": "deny"}}, headers=auth("reviewer"))
        assert r.status_code == 200
        waiting.join(10)
        assert answer["response"].status_code == 200 and answer["response"].json() == {"decision": "deny"}
        assert answer["at"] - decided_at < 1.0  # woken by the decision, not by a poll or a timeout
    finally:
        a.stop()
        b.stop()


def test_a_replica_that_loses_the_store_fails_closed_and_recovers(tmp_path, own_redis, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, store=own_redis.url, policy={"oversight": {"max_staleness": "1s"}})
    gateway = GatewayProcess(config, free_port()).start()
    try:
        assert _post(gateway.url).status_code == 200
        own_redis.stop()
        lost = time.monotonic()
        while True:
            r = _post(gateway.url)
            if r.headers.get("x-oversight-level") == "4":
                break
            assert time.monotonic() - lost < 1.0 + 1.0, "still serving at level 0 after max_staleness + 1 s"
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable"
        calls_while_down = demo.stats()["requests"]
        for _ in range(3):
            assert _post(gateway.url).headers["x-oversight-level"] == "4"
        assert demo.stats()["requests"] == calls_while_down  # the model is not called while the state is unknown
        own_redis.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = _post(gateway.url)
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and r.headers["x-oversight-level"] == "0"
        assert "cannot confirm control state" in gateway.log()
    finally:
        gateway.stop()
