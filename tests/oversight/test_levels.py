"""Each level's behaviour, end to end through the demo model, counting what reaches it."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import auth, eventually

APPLICANT = {"applicant": {"id": "lv-1", "group": "A", "income": 40000}}


async def _set(gw, level: int, model: str | None = None, who: str = "operator"):
    path = f"/admin/oversight/models/{model}" if model else "/admin/oversight/global"
    return await gw.client.put(path, json={"level": level, "reason": f"test sets {level}"}, headers=auth(who))


async def _predict(gw, **headers):
    return await gw.client.post("/models/demo/predict", json=APPLICANT, headers={**auth("client"), **headers})


async def test_level_0_the_model_answers(make_gateway, demo):
    async with make_gateway(policy={"defaults": {"sample_rate": {0: 0.0}}}) as gw:
        r = await _predict(gw)
        assert r.status_code == 200 and r.json()["decision"] in ("approve", "deny")
        assert (r.headers["x-oversight-level"], r.headers["x-oversight-route"]) == ("0", "auto")
    assert demo.stats()["requests"] == 1


async def test_level_1_the_model_answers_and_samples_more(make_gateway, demo):
    async with make_gateway(policy={"defaults": {"sample_rate": {0: 0.0, 1: 1.0}}}) as gw:
        assert (await _set(gw, 1)).status_code == 200
        r = await _predict(gw)
        assert r.status_code == 200
        # sampled: a post-hoc ticket exists; the client is not told (its answer is the same either way)
        assert (r.headers["x-oversight-level"], r.headers["x-oversight-route"]) == ("1", "auto")
        tickets = await eventually(lambda: _tickets(gw, "pending", kind="sample"))
        assert tickets[0]["request_id"] == r.headers["x-request-id"]
        assert tickets[0]["recommendation"]["status"] == 200
        assert tickets[0]["recommendation"]["body"] == r.text  # what was served, kept for the reviewer


async def test_level_3_holds_every_answer_as_a_recommendation(make_gateway, demo):
    async with make_gateway() as gw:
        await _set(gw, 3, "demo")
        r = await _predict(gw)
        assert r.status_code == 202
        assert (r.headers["x-oversight-level"], r.headers["x-oversight-route"]) == ("3", "held")
        body = r.json()
        assert r.headers["location"] == body["status_url"] == f"/v1/decisions/{body['ticket']}"
        ticket = (await gw.client.get(f"/review/tickets/{body['ticket']}", headers=auth("reviewer"))).json()
        assert ticket["kind"] == "hold" and ticket["level"] == 3
        assert ticket["confidence"] == 0.92  # the demo model's, shown to the reviewer
        assert ticket["recommendation"]["status"] == 200
        assert '"decision"' in ticket["recommendation"]["body"]
        assert ticket["request"]["body"] == '{"applicant":{"id":"lv-1","group":"A","income":40000}}'
        assert ["authorization", "[redacted]"] in ticket["request"]["headers"]
    assert demo.stats()["requests"] == 1


async def test_level_4_never_calls_the_model(make_gateway, demo):
    async with make_gateway() as gw:
        await _set(gw, 4, "demo")
        for i in range(5):  # five different requests (a byte-identical one would be a retry joining the first)
            r = await gw.client.post("/models/demo/predict", json={"applicant": {**APPLICANT["applicant"], "id": f"h-{i}"}},
                                     headers=auth("client"))
            assert r.status_code == 202
            assert (r.headers["x-oversight-level"], r.headers["x-oversight-route"]) == ("4", "human")
        chat = await gw.client.post("/v1/chat/completions", json={"model": "demo", "stream": True, "messages": []},
                                    headers={**auth("client"), "prefer": "respond-async"})
        assert chat.status_code == 202
        tickets = await _tickets(gw, "pending")
        assert len(tickets) == 6 and all(t["kind"] == "human" and t["recommendation"] is None for t in tickets)
    assert demo.stats()["requests"] == 0


async def test_the_effective_level_is_the_higher_of_global_and_model(make_gateway, demo):
    async with make_gateway() as gw:
        await _set(gw, 3, "demo")
        await _set(gw, 1)
        assert (await _predict(gw)).headers["x-oversight-level"] == "3"
        await _set(gw, 4)
        assert (await _predict(gw)).headers["x-oversight-level"] == "4"


async def test_kill_switch_stops_the_next_request(make_gateway, demo):
    async with make_gateway() as gw:
        assert (await _predict(gw)).status_code == 200
        r = await gw.client.post("/admin/kill", json={"reason": "incident 7", "model": "demo"}, headers=auth("operator"))
        assert r.status_code == 200
        result = r.json()
        assert (result["level"], result["previous"], result["applied_by"], result["replicas"]) == (4, 0, 1, 1)
        assert result["epoch"] > 0
        assert (await _predict(gw)).headers["x-oversight-route"] == "human"
        view = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()
        assert view["models"]["demo"]["set_by"] == "test-operator"
        assert view["models"]["demo"]["reason"] == "incident 7"
        assert view["history"][0]["action"] == "kill" and view["history"][0]["from"] == 0
    assert demo.stats()["requests"] == 1


async def test_level_4_ends_streams_in_flight(make_gateway, demo):
    async with make_gateway() as gw:
        body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "long " * 30}]}
        received = []

        async def stream():
            async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=auth("client")) as r:
                async for chunk in r.aiter_raw():
                    received.append(chunk)

        reader = asyncio.create_task(stream())
        await eventually(lambda: _value(len(received) >= 1))
        await gw.client.post("/admin/kill", json={"reason": "stop it"}, headers=auth("operator"))
        with pytest.raises(Exception):
            await asyncio.wait_for(reader, 5)
        assert b"[DONE]" not in b"".join(received)


async def _tickets(gw, status: str, kind: str | None = None):
    params = {"status": status, **({"kind": kind} if kind else {})}
    return (await gw.client.get("/review/tickets", params=params, headers=auth("reviewer"))).json()["tickets"]


async def _value(value):
    return value
