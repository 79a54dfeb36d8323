"""Held requests: 202 and a ticket, `Prefer` honoured, decisions delivered, expiry failing closed."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support import auth, eventually

APPLICANT = {"applicant": {"id": "h-1", "group": "B"}}


async def _hold_one(gw, **headers):
    await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "review all"}, headers=auth("operator"))
    return await gw.client.post("/models/demo/predict", json=APPLICANT, headers={**auth("client"), **headers})


async def _decide(gw, ticket: str, who: str = "reviewer", **decision):
    return await gw.client.post(f"/review/tickets/{ticket}/decision", json=decision, headers=auth(who))


async def test_a_held_request_gets_202_and_its_decision_later(make_gateway):
    async with make_gateway() as gw:
        held = await _hold_one(gw)
        ticket = held.json()["ticket"]
        pending = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert pending.status_code == 202 and pending.json()["status"] == "pending"
        r = await _decide(gw, ticket, action="approve", note="looks right")
        assert r.status_code == 200 and r.json()["decision"]["by"] == "test-reviewer"
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 200
        assert final.json()["decision"] in ("approve", "deny")  # the model's own answer, approved
        assert (final.headers["x-decision"], final.headers["x-decided-by"]) == ("approve", "test-reviewer")
        assert final.headers["x-request-id"] == held.headers["x-request-id"]


async def test_an_override_is_what_the_client_gets(make_gateway):
    async with make_gateway() as gw:
        held = await _hold_one(gw)
        await _decide(gw, held.json()["ticket"], action="override", response={"decision": "deny", "by": "human"}, note="no")
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 200 and final.json() == {"decision": "deny", "by": "human"}
        assert final.headers["x-decision"] == "override"


async def test_a_rejection_is_a_clear_error(make_gateway):
    async with make_gateway() as gw:
        held = await _hold_one(gw)
        await _decide(gw, held.json()["ticket"], action="reject", note="not for a model to decide")
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 403
        error = final.json()["error"]
        assert error["type"] == "rejected" and "not for a model to decide" in error["message"]


async def test_prefer_wait_answers_with_the_decision_when_it_comes_in_time(make_gateway):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "r"}, headers=auth("operator"))

        async def reviewer():
            tickets = await eventually(lambda: _pending(gw))
            await asyncio.sleep(0.2)
            await _decide(gw, tickets[0]["id"], action="override", response={"ok": True})

        helper = asyncio.create_task(reviewer())
        started = time.monotonic()
        r = await gw.client.post("/models/demo/predict", json=APPLICANT, headers={**auth("client"), "prefer": "wait=10"})
        await helper
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert r.headers["preference-applied"] == "wait=10"
        assert r.headers["x-oversight-route"] == "held"
        assert time.monotonic() - started < 5


async def test_prefer_wait_gives_202_when_nobody_decides_in_time(make_gateway):
    async with make_gateway(policy={"review": {"max_hold_wait": "500ms"}}) as gw:
        started = time.monotonic()
        r = await _hold_one(gw, prefer="wait=30")  # capped by the policy's max_hold_wait
        assert r.status_code == 202
        assert r.headers["preference-applied"] == "wait=0"
        assert time.monotonic() - started < 3


async def test_respond_async_answers_at_once(make_gateway):
    async with make_gateway() as gw:
        r = await _hold_one(gw, prefer="respond-async, wait=30")
        assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"


async def test_decision_polling_can_wait_too(make_gateway):
    async with make_gateway() as gw:
        held = await _hold_one(gw)

        async def later():
            await asyncio.sleep(0.2)
            await _decide(gw, held.json()["ticket"], action="reject")

        task = asyncio.create_task(later())
        r = await gw.client.get(held.headers["location"], headers={**auth("client"), "prefer": "wait=5"})
        await task
        assert r.status_code == 403 and r.headers["x-decision"] == "reject"


async def test_only_the_asking_client_or_an_operator_sees_a_decision(make_gateway):
    async with make_gateway() as gw:
        held = await _hold_one(gw)
        assert (await gw.client.get(held.headers["location"], headers=auth("client2"))).status_code == 404
        assert (await gw.client.get(held.headers["location"], headers=auth("operator"))).status_code == 202
        assert (await gw.client.get(held.headers["location"], headers=auth("reviewer"))).status_code == 403
        assert (await gw.client.get("/v1/decisions/tk_nope", headers=auth("client"))).status_code == 404


async def test_expiry_closes_with_reject_by_default(make_gateway):
    async with make_gateway(policy={"review": {"timeout": "300ms"}}) as gw:
        held = await _hold_one(gw)
        ticket_id = held.json()["ticket"]

        async def expired():
            t = (await gw.client.get(f"/review/tickets/{ticket_id}", headers=auth("reviewer"))).json()
            return t if t["status"] == "expired" else None

        ticket = await eventually(expired, timeout=5)
        assert ticket["decision"]["action"] == "reject" and ticket["decision"]["by"] == "policy:on_expiry"
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 403 and final.json()["error"]["type"] == "expired"
        late = await _decide(gw, ticket_id, action="approve")
        assert late.status_code == 409 and late.json()["error"]["type"] == "conflict"


async def test_expiry_can_release_the_model_answer_when_the_policy_says(make_gateway):
    async with make_gateway(policy={"review": {"timeout": "300ms", "on_expiry": "release"}}) as gw:
        held = await _hold_one(gw)
        closed = await gw.gateway.review.expire_due(time.time() + 1)
        assert closed == 1
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 200 and final.headers["x-decision"] == "release"
        assert final.json()["decision"] in ("approve", "deny")


async def test_a_human_task_cannot_expire_into_a_model_answer(make_gateway):
    async with make_gateway(policy={"review": {"timeout": "300ms", "on_expiry": "release"}}) as gw:
        await gw.client.post("/admin/kill", json={"reason": "pause"}, headers=auth("operator"))
        r = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
        await gw.gateway.review.expire_due(time.time() + 1)
        final = await gw.client.get(r.headers["location"], headers=auth("client"))
        assert final.status_code == 403 and final.headers["x-decision"] == "reject"


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_pending_tickets_survive_a_restart(make_gateway, tmp_path, request, store):
    url = request.getfixturevalue("redis_url") if store == "redis" else "embedded"
    directory = tmp_path / "restart"
    async with make_gateway(store=url, directory=directory) as gw:
        held = await _hold_one(gw)
    async with make_gateway(store=url, directory=directory) as gw:
        assert [t["id"] for t in await _pending(gw)] == [held.json()["ticket"]]
        assert (await _decide(gw, held.json()["ticket"], action="approve")).status_code == 200
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 200


async def _pending(gw):
    return (await gw.client.get("/review/tickets", headers=auth("reviewer"))).json()["tickets"]
