"""The data plane end to end: a gateway on a loopback port in front of real upstreams."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from tests.proxy.echo import EchoUpstream
from tests.support import TOKENS, auth, eventually, free_port, serve_in_process, start_demo, write_config


@pytest.fixture
async def echo():
    upstream = await EchoUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture(scope="module")
def other_model():
    model = start_demo("--name", "other-v7")
    yield model
    model.stop()


@pytest.fixture
async def gw(tmp_path, demo, echo, other_model):
    config = write_config(
        tmp_path,
        {
            "demo": {"v1": demo.url},
            "other": {"v7": other_model.url},
            "echo": {"e1": {"upstream": echo.url, "headers": {"authorization": "Bearer upstream-key"}}},
            "down": {"d1": f"http://127.0.0.1:{free_port()}"},
        },
        extra={"limits": {"max_body_bytes": 1000}, "timeouts": {"read": "300ms", "connect": "1s"}},
        policy={"defaults": {"sample_rate": {0: 0.0}}},  # sampling is not what these tests look at
    )
    async with serve_in_process(config) as running:
        yield running


def _gateway_headers_ok(response: httpx.Response, version: str) -> None:
    assert len(response.headers["x-request-id"]) >= 8
    assert response.headers["x-model-version"] == version
    assert response.headers["x-oversight-level"] == "0"
    assert response.headers["x-oversight-route"] == "auto"
    assert 0 <= float(response.headers["x-gateway-overhead-ms"]) < 1000


# routing ---------------------------------------------------------------------------
async def test_models_route_forwards_to_the_named_model(gw, demo):
    r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": "a1", "group": "A"}}, headers=auth("client"))
    assert r.status_code == 200
    assert r.json()["model"] == "demo-v1"  # the demo model answered, not the other one (other-v7)
    assert r.json()["decision"] in ("approve", "deny")
    _gateway_headers_ok(r, "v1")
    assert demo.stats()["by_path"] == {"/predict": 1}


async def test_v1_routes_follow_the_body_model_field(gw, demo, other_model):
    chat = {"messages": [{"role": "user", "content": "hello"}]}
    r1 = await gw.client.post("/v1/chat/completions", json={"model": "demo", **chat}, headers=auth("client"))
    r2 = await gw.client.post("/v1/chat/completions", json={"model": "other", **chat}, headers=auth("client"))
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert r2.json()["model"] == "other-v7"
    assert r1.json()["model"] != "other-v7"
    _gateway_headers_ok(r1, "v1")
    _gateway_headers_ok(r2, "v7")


async def test_path_query_and_method_pass_through(gw, echo):
    r = await gw.client.request("PATCH", "/models/echo/a/b%20c?x=1&y=two", content=b"abc", headers=auth("client"))
    seen = r.json()
    assert (seen["method"], seen["path"], seen["query"]) == ("PATCH", "/a/b%20c", "x=1&y=two")
    assert seen["body_length"] == 3
    r = await gw.client.get("/models/echo", headers=auth("client"))
    assert r.json()["path"] == "/"


async def test_headers_are_rewritten_for_each_hop(gw, echo):
    r = await gw.client.post(
        "/models/echo/echo",
        content=b"{}",
        headers={**auth("client"), "connection": "keep-alive, x-drop-me", "x-drop-me": "1", "te": "trailers",
                 "x-forwarded-for": "10.0.0.1", "x-keep": "yes", "x-request-id": "client-chosen-id-1"},
    )
    upstream_saw = dict(r.json()["headers"])
    assert upstream_saw["authorization"] == "Bearer upstream-key"  # the version's credential, never the caller's token
    assert TOKENS["client"] not in json.dumps(r.json())
    assert "x-drop-me" not in upstream_saw and "te" not in upstream_saw
    assert upstream_saw["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert upstream_saw["x-forwarded-proto"] == "http"
    assert upstream_saw["x-request-id"] == "client-chosen-id-1"
    assert upstream_saw["x-keep"] == "yes"
    assert upstream_saw["host"] == f"127.0.0.1:{echo.port}"
    # on the way back: the upstream's hop-by-hop fields are dropped, the gateway's own win
    assert r.headers["x-request-id"] == "client-chosen-id-1"
    assert "x-hop" not in r.headers and "keep-alive" not in r.headers


async def test_a_request_id_is_made_when_missing_or_unusable(gw):
    r1 = await gw.client.post("/models/echo/echo", headers=auth("client"))
    r2 = await gw.client.post("/models/echo/echo", headers={**auth("client"), "x-request-id": "bad id with spaces"})
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
    assert r2.headers["x-request-id"] != "bad id with spaces"
    assert dict(r1.json()["headers"])["x-request-id"] == r1.headers["x-request-id"]


async def test_the_gateway_answers_the_openai_model_list(gw):
    r = await gw.client.get("/v1/models", headers=auth("client"))
    assert [m["id"] for m in r.json()["data"]] == ["demo", "down", "echo", "other"]


# streaming -------------------------------------------------------------------------
async def test_a_stream_reaches_the_client_before_the_upstream_finishes(gw, echo):
    async with gw.client.stream("GET", "/models/echo/gated-stream", headers=auth("client")) as r:
        assert r.headers["content-type"] == "text/event-stream"
        chunks = r.aiter_raw()
        first = await asyncio.wait_for(chunks.__anext__(), 5)
        assert first == b"data: first\n\n"  # the upstream is still waiting at its gate
        echo.gate.set()
        rest = b"".join([c async for c in chunks])
    assert rest == b"data: second\n\n"


async def test_openai_streams_pass_through_event_by_event(gw):
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "tell me"}]}
    arrivals = []
    async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=auth("client")) as r:
        async for chunk in r.aiter_raw():
            arrivals.append((time.monotonic(), chunk))
    events = b"".join(c for _, c in arrivals).split(b"\n\n")
    assert events[-2] == b"data: [DONE]"
    assert len(arrivals) >= 3
    assert arrivals[-1][0] - arrivals[0][0] > 0.1  # spaced as the demo model spaced them (50 ms apart)


async def test_a_streamed_request_body_passes_through(gw, echo):
    async def upload():
        for i in range(5):
            yield b"x" * 100
            await asyncio.sleep(0.01)

    r = await gw.client.post("/models/echo/echo", content=upload(), headers=auth("client"))
    assert r.status_code == 200
    assert r.json()["body_length"] == 500


# errors ----------------------------------------------------------------------------
def _openai_error(r: httpx.Response, status: int, type: str, code: str) -> dict:
    """The OpenAI error shape every /v1 error has: type, code and param as the SDKs read them, and the request id."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert (error["type"], error["code"]) == (type, code) and "param" in error
    assert error["request_id"] == r.headers["x-request-id"]
    assert error["message"]
    return error


def _error(r: httpx.Response, status: int, type: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["type"] == type
    assert error["request_id"] == r.headers["x-request-id"]
    assert error["message"]
    return error


async def test_unknown_model_is_404_on_both_routes(gw):
    e = _error(await gw.client.post("/models/nope/predict", json={}, headers=auth("client")), 404, "not_found")
    assert "nope" in e["message"] and "demo" in e["message"]
    e = _openai_error(await gw.client.post("/v1/chat/completions", json={"model": "nope"}, headers=auth("client")), 404,
                      "invalid_request_error", "model_not_found")
    assert e["param"] == "model" and "nope" in e["message"]


@pytest.mark.parametrize("body", [b"not json", b"", b"[1,2]", b'{"model": 7}', b'{"messages": []}'])
async def test_v1_body_without_a_usable_model_is_400(gw, body):
    _openai_error(await gw.client.post("/v1/chat/completions", content=body, headers=auth("client")), 400,
                  "invalid_request_error", "invalid_request")


async def test_a_body_over_the_limit_is_413(gw, echo):
    e = _error(await gw.client.post("/models/echo/echo", content=b"x" * 1001, headers=auth("client")), 413, "payload_too_large")
    assert "1000" in e["message"]

    async def chunked():
        for _ in range(11):
            yield b"y" * 100

    _error(await gw.client.post("/models/echo/echo", content=chunked(), headers=auth("client")), 413, "payload_too_large")
    _openai_error(await gw.client.post("/v1/chat/completions", content=b'{"model":"echo","p":"' + b"z" * 1000 + b'"}',
                                       headers=auth("client")), 413, "invalid_request_error", "request_too_large")
    assert all(len(seen.body) <= 1000 for seen in echo.requests)


async def test_an_upstream_that_refuses_is_502(gw):
    e = _error(await gw.client.post("/models/down/predict", json={}, headers=auth("client")), 502, "upstream_unreachable")
    assert "down/d1" in e["message"]


async def test_an_upstream_that_resets_is_502(gw):
    _error(await gw.client.get("/models/echo/reset", headers=auth("client")), 502, "upstream_unreachable")


async def test_an_upstream_that_is_too_slow_is_504(gw, echo):
    started = time.monotonic()
    _error(await gw.client.get("/models/echo/hang", headers=auth("client")), 504, "upstream_timeout")
    assert time.monotonic() - started < 2
    await eventually(lambda: _value(echo.closed_early >= 1))  # the gateway closed its side


async def test_an_answer_that_breaks_off_is_not_passed_off_as_complete(gw):
    with pytest.raises(httpx.RemoteProtocolError):
        await gw.client.get("/models/echo/truncate", headers=auth("client"))


async def test_upstream_errors_are_passed_through_unchanged(gw):
    r = await gw.client.get("/models/echo/echo?status=503", headers=auth("client"))
    assert r.status_code == 503 and r.json()["method"] == "GET"
    _gateway_headers_ok(r, "e1")


# cancellation ----------------------------------------------------------------------
async def test_a_client_that_disconnects_cancels_the_upstream_call(gw, demo):
    demo.configure(latency_ms=3000)
    with pytest.raises(httpx.ReadTimeout):
        await gw.client.post("/models/demo/predict", json={"applicant": {"id": "x"}}, headers=auth("client"), timeout=0.3)
    stats = await eventually(lambda: _value(demo.stats() if demo.stats()["cancelled"] == 1 else None), timeout=2)
    assert stats["in_flight"] == 0


async def test_a_client_that_leaves_a_stream_cancels_it_upstream(gw, demo):
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "a long story " * 20}]}
    async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=auth("client")) as r:
        async for _ in r.aiter_raw():
            break
    await eventually(lambda: _value(demo.stats()["cancelled"] == 1), timeout=3)


# auth --------------------------------------------------------------------------------
async def test_missing_or_unknown_tokens_are_401_and_wrong_roles_403(gw, demo, caplog):
    caplog.set_level(logging.DEBUG)
    e = _error(await gw.client.post("/models/demo/predict", json={}), 401, "unauthorized")
    assert "Bearer" in e["message"]
    r = await gw.client.post("/models/demo/predict", json={}, headers={"authorization": "Bearer gw_not_a_real_token"})
    _error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    _error(await gw.client.post("/models/demo/predict", json={}, headers={"authorization": "Basic abc"}), 401, "unauthorized")
    e = _error(await gw.client.post("/models/demo/predict", json={}, headers=auth("operator")), 403, "forbidden")
    assert "test-operator" in e["message"]
    assert demo.stats()["requests"] == 0
    logged = "\n".join(record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records)
    assert "test-operator" in logged  # the token's id is logged...
    for secret in (*TOKENS.values(), "gw_not_a_real_token"):  # ...never a token
        assert secret not in logged
        assert secret not in e["message"]


async def test_only_health_endpoints_are_open(gw):
    assert (await gw.client.get("/healthz")).status_code == 200
    assert (await gw.client.get("/readyz")).json()["status"] == "ready"
    _error(await gw.client.get("/metrics"), 401, "unauthorized")
    _error(await gw.client.get("/metrics", headers=auth("client")), 403, "forbidden")
    _openai_error(await gw.client.get("/v1/models"), 401, "invalid_request_error", "invalid_api_key")
    _error(await gw.client.get("/no/such/thing"), 404, "not_found")


async def test_metrics_count_requests_by_model_version_and_status(gw):
    await gw.client.post("/models/demo/predict", json={"applicant": {"id": "m"}}, headers=auth("client"))
    await gw.client.post("/models/down/predict", json={}, headers=auth("client"))
    text = (await gw.client.get("/metrics", headers=auth("operator"))).text
    assert 'gateway_requests_total{model="demo",route="auto",status="200",version="v1"} 1.0' in text
    assert 'gateway_upstream_errors_total{kind="connect",model="down",version="d1"} 1.0' in text
    assert 'gateway_request_duration_seconds_count{model="demo",route="auto",version="v1"} 1.0' in text
    assert 'gateway_oversight_level{model="demo"} 0.0' in text


async def _value(value):
    return value


async def test_a_defect_still_answers_with_the_json_error_shape(gw, monkeypatch):
    def broken(model, level, request_id):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gateway.planner, "plan", broken)
    r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": "x"}}, headers=auth("client"))
    error = _error(r, 500, "internal")
    assert "a bug" not in error["message"] and "Traceback" not in r.text
