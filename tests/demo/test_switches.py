"""Failure switches (latency, fail_rate, hang, reset), counters, and the control endpoints."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.demo.conftest import wait_for

CHAT = "/v1/chat/completions"
CHAT_BODY = {"messages": [{"role": "user", "content": "hello"}]}
APPLICANT = {"applicant": {"id": 1, "group": "A"}}


def _stats(client: httpx.Client) -> dict:
    return client.get("/_demo/stats").json()


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_unknown_path_404_and_wrong_method_405(client):
    r = client.get("/v2/whatever")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = client.get("/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_stats_count_model_traffic_only(client):
    client.post(CHAT, json=CHAT_BODY)
    client.post("/predict", json=APPLICANT)
    client.post("/predict", json=APPLICANT)
    client.get("/v1/models")
    client.get("/health")
    client.get("/_demo/state")
    stats = _stats(client)
    assert stats["requests"] == 4
    assert stats["by_path"] == {CHAT: 1, "/predict": 2, "/v1/models": 1}
    assert stats["health_checks"] == 1
    assert stats["in_flight"] == 0 and stats["cancelled"] == 0


def test_fail_rate_is_an_even_repeatable_sequence(client):
    r = client.post("/_demo/config", json={"fail_rate": 0.25, "fail_status": 503})
    assert r.status_code == 200 and r.json()["fail_rate"] == 0.25
    statuses = [client.post("/predict", json=APPLICANT).status_code for _ in range(8)]
    assert statuses == [200, 200, 200, 503] * 2
    failed = client.post(CHAT, json=CHAT_BODY)
    statuses.append(failed.status_code)
    statuses += [client.post(CHAT, json=CHAT_BODY).status_code for _ in range(3)]
    assert statuses[8:] == [200, 200, 200, 503]
    r = [client.post("/predict", json=APPLICANT) for _ in range(4)][-1]
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "demo_injected_failure"
    assert _stats(client)["injected_failures"] == 4
    # Setting the rate again restarts the sequence.
    client.post("/_demo/config", json={"fail_rate": 0.5})
    assert [client.post("/predict", json=APPLICANT).status_code for _ in range(4)] == [200, 503, 200, 503]


def test_fail_rate_one_fails_everything(client):
    client.post("/_demo/config", json={"fail_rate": 1.0, "fail_status": 429})
    assert {client.post("/predict", json=APPLICANT).status_code for _ in range(5)} == {429}
    assert client.get("/health").status_code == 200  # only inference endpoints fail


def test_latency(client):
    client.post("/_demo/config", json={"latency_ms": 300})
    for path, body in [("/predict", APPLICANT), (CHAT, CHAT_BODY)]:
        t0 = time.monotonic()
        assert client.post(path, json=body).status_code == 200
        assert time.monotonic() - t0 >= 0.29
    t0 = time.monotonic()
    client.get("/health")
    assert time.monotonic() - t0 < 0.2
    client.post("/_demo/reset")
    t0 = time.monotonic()
    client.post("/predict", json=APPLICANT)
    assert time.monotonic() - t0 < 0.2


def test_client_giving_up_during_latency_is_cancelled(client):
    client.post("/_demo/config", json={"latency_ms": 2000})
    with pytest.raises(httpx.ReadTimeout):
        client.post("/predict", json=APPLICANT, timeout=0.2)
    assert wait_for(lambda: _stats(client)["cancelled"] == 1)
    assert _stats(client)["in_flight"] == 0


def test_client_leaving_mid_stream_is_cancelled(client):
    client.post("/_demo/config", json={"stream_delay_ms": 100})
    with client.stream("POST", CHAT, json={**CHAT_BODY, "stream": True}) as r:
        lines = r.iter_lines()  # keep it: a discarded httpx line iterator closes the connection
        assert next(lines).startswith("data: ")
        stats = _stats(client)
        assert stats["in_flight"] == 1 and stats["cancelled"] == 0
    # Leaving the block closed the connection half way through the stream.
    assert wait_for(lambda: _stats(client)["cancelled"] == 1)
    assert _stats(client)["in_flight"] == 0
    # A stream read to the end is not cancelled.
    client.post("/_demo/config", json={"stream_delay_ms": 1})
    with client.stream("POST", CHAT, json={**CHAT_BODY, "stream": True}) as r:
        assert list(r.iter_lines())[-2] == "data: [DONE]"
    wait_for(lambda: _stats(client)["cancelled"] >= 1)
    assert _stats(client)["cancelled"] == 1


def test_hang_never_answers_until_switched_off(client, demo_server):
    client.post("/_demo/config", json={"hang": True})
    with pytest.raises(httpx.ReadTimeout):
        client.post(CHAT, json=CHAT_BODY, timeout=0.3)
    assert wait_for(lambda: _stats(client)["cancelled"] == 1)

    result: dict = {}

    def waiting_client() -> None:
        with httpx.Client(base_url=demo_server.url, timeout=5) as client:
            result["response"] = client.post("/predict", json=APPLICANT)

    thread = threading.Thread(target=waiting_client)
    thread.start()
    assert wait_for(lambda: _stats(client)["in_flight"] == 1)
    time.sleep(0.2)
    assert "response" not in result
    client.post("/_demo/config", json={"hang": False})  # releases the waiting request
    thread.join(5)
    assert result["response"].status_code == 200
    assert _stats(client)["cancelled"] == 1


def test_reset_switch_drops_the_connection_without_a_response(client, demo_server):
    client.post("/_demo/config", json={"reset": True})
    with pytest.raises(httpx.TransportError):
        client.post("/predict", json=APPLICANT)
    # On a raw socket: no status line, the connection is reset (RST), not closed cleanly.
    url = urlsplit(demo_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=3) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        with pytest.raises(ConnectionResetError):
            data = sock.recv(1024)
            assert not data.startswith(b"HTTP/"), data
            sock.recv(1024)  # a clean close would read b"" here
    assert _stats(client)["resets"] == 2
    assert client.get("/health").status_code == 200  # control and health endpoints are unaffected


def test_config_is_validated_and_atomic(client):
    before = client.get("/_demo/state").json()
    for bad in [{"latency_ms": -1}, {"fail_rate": 1.5}, {"fail_status": 200}, {"confidence": 0},
                {"hang": "yes"}, {"skew": {"B": 2}}, {"latency_ms": 5, "nonsense": 1}, [1]]:
        r = client.post("/_demo/config", json=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == 400
    r = client.post("/_demo/config", content=b"{not json")
    assert r.status_code == 400
    assert client.get("/_demo/state").json() == before


def test_config_confidence_applies_to_both_endpoints(client):
    client.post("/_demo/config", json={"confidence": 0.33, "name": "renamed"})
    assert client.post("/predict", json=APPLICANT).json()["confidence"] == 0.33
    chat = client.post(CHAT, json=CHAT_BODY).json()
    assert chat["confidence"] == 0.33 and chat["model"] == "renamed"


def test_reset_restores_start_up_switches_and_zeroes_counters(client):
    start = client.get("/_demo/state").json()
    assert start["name"] == "demo-test" and start["confidence"] == 0.92 and start["hang"] is False
    client.post("/_demo/config", json={"latency_ms": 5, "fail_rate": 0.5, "skew": {"B": 0.3}, "confidence": 0.5})
    for _ in range(4):
        client.post("/predict", json=APPLICANT)
    stats = _stats(client)
    assert stats["requests"] == 4 and stats["injected_failures"] == 2
    r = client.post("/_demo/reset")
    assert r.status_code == 200 and r.json() == start
    assert client.get("/_demo/state").json() == start
    stats = _stats(client)
    assert stats["requests"] == 0 and stats["by_path"] == {} and stats["injected_failures"] == 0
    assert client.post("/predict", json=APPLICANT).status_code == 200  # the fail sequence restarted too
