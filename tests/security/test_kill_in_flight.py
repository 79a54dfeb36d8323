"""A raised level reaches the answers already on their way: none is delivered once the call has answered.

The demo model takes a second per answer. Requests are sent, and while the model is
still computing, `POST /admin/kill` (level 4) or a raise to 3 lands. When the call has
answered, no answer the model was still working on may reach its client as a model's
answer: at 4 each becomes a human task, at 3 each is held; a stream in flight ends.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.rawhttp import RawUpstream
from tests.support import GatewayProcess, auth, free_port, start_demo, write_config


@pytest.fixture(scope="module")
def slow_model():
    model = start_demo("--latency-ms", "1000", "--stream-delay-ms", "100")
    yield model
    model.stop()


@pytest.fixture
def gateway(tmp_path, slow_model):
    config = write_config(tmp_path, {"credit": {"v1": slow_model.url}}, policy={"defaults": {"sample_rate": {0: 0.0}}})
    process = GatewayProcess(config, free_port()).start()
    yield process
    process.stop()


async def _in_flight(client: httpx.AsyncClient, n: int) -> list[asyncio.Task]:
    async def one(i: int) -> tuple[float, int, dict]:
        r = await client.post("/models/credit/predict", json={"applicant": {"id": f"k-{i}"}}, headers=auth("client"))
        return time.monotonic(), r.status_code, {**r.headers}
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.4)  # sent, and the model is computing (it takes 1 s)
    return tasks


@pytest.mark.parametrize("level,route", [(4, "human"), (3, "held")])
async def test_no_model_answer_is_delivered_after_a_raise_answered(gateway, slow_model, level, route):
    slow_model.reset()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        tasks = await _in_flight(client, 20)
        sent = time.monotonic()
        if level == 4:
            r = await client.post("/admin/kill", json={"reason": "stop now"}, headers=auth("operator"))
        else:
            r = await client.put("/admin/oversight/global", json={"level": 3, "reason": "hold all"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["applied_by"] == r.json()["replicas"] == 1
        results = await asyncio.gather(*tasks)
    for at, status, headers in results:
        # Every one was still in flight when the raise was sent (the model takes 1 s): its exchange is stopped
        # as the replica applies the raise, so its 202 may reach the client just before the call's own answer.
        assert at >= sent
        assert (status, headers["x-oversight-route"], headers["x-oversight-level"]) == (202, route, str(level))


async def test_a_stream_in_flight_ends_at_a_raise_to_3(gateway, slow_model):
    slow_model.reset()
    body = {"model": "credit", "stream": True, "messages": [{"role": "user", "content": "a long one " * 30}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth("client")) as r:
            assert r.status_code == 200
            received = b""
            broken = False
            try:
                async for piece in r.aiter_raw():
                    received += piece
                    if received.count(b"data:") == 2:
                        raised = await client.put("/admin/oversight/global", json={"level": 3, "reason": "hold"},
                                                  headers=auth("operator"))
                        assert raised.status_code == 200
                        at_raise = received.count(b"data:")
            except httpx.HTTPError:
                broken = True
    assert broken and b"[DONE]" not in received
    assert received.count(b"data:") <= at_raise + 1  # at most an event already on its way


async def test_a_pause_while_an_answer_is_awaited_after_its_headers_makes_it_a_human_task(tmp_path):
    """The model sent its headers and not yet its body: the answer has not started for the client, so a pause
    makes the request a human task (202), never a 502 for an answer the gateway broke off itself."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n"
    server = await RawUpstream(lambda request: [head, 1.5, b'{"decision": "yes"}\n']).start()
    config = write_config(tmp_path, {"credit": {"v1": server.url}}, policy={"defaults": {"sample_rate": {0: 0.0}}})
    process = GatewayProcess(config, free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            waiting = asyncio.create_task(client.post("/models/credit/predict", json={"applicant": {"id": "p-1"}},
                                                      headers=auth("client")))
            await asyncio.sleep(0.5)  # the headers are in, the body is 1 s away
            killed = await client.post("/admin/kill", json={"reason": "stop now"}, headers=auth("operator"))
            assert killed.status_code == 200
            answer = await waiting
        assert (answer.status_code, answer.headers["x-oversight-route"], answer.headers["x-oversight-level"]) == \
            (202, "human", "4"), answer.text
    finally:
        process.stop()
        await server.stop()
