"""A ticket's deadline holds whenever the expiry sweep runs: a decision sent after it finds the ticket expired."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.review.deadlines import DEADLINES
from gateway.review.tickets import HeldRequest, Recommendation, Ticket
from tests.support import auth

APPLICANT = {"applicant": {"id": "dl-1", "group": "A", "income": 40000}}


async def test_a_decision_after_the_deadline_is_refused_and_the_ticket_is_expired(make_gateway, demo):
    async with make_gateway(policy={"review": {"timeout": "300ms"}}) as gw:
        gw.gateway.review._sweeper.cancel()  # no sweep at all: the deadline must hold by itself
        await gw.client.put("/admin/oversight/global", json={"level": 3, "reason": "review"}, headers=auth("operator"))
        held = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
        ticket = held.json()["ticket"]
        await asyncio.sleep(max(0.0, held.json()["expires_at"] - time.time()) + 0.05)
        r = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve"}, headers=auth("reviewer"))
        assert r.status_code == 409 and r.json()["error"]["status"] == "expired", r.text
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 403 and final.json()["error"]["type"] == "expired"
        assert final.headers["x-decision"] == "reject"  # the policy's on_expiry, fail closed


def _sample(n: int) -> Ticket:
    request = HeldRequest("POST", "/models/demo/predict", (("content-type", "application/json"),), b'{"n": %d}' % n)
    return Ticket.new(kind="sample", request_id=f"r{n}", caller="test-client", model="demo", version="v1", level=1,
                      reason="sampled at level 1 for post-hoc review", request=request,
                      recommendation=Recommendation(200, (), b'{"decision": "approve"}'), confidence=None, timeout=None,
                      policy_version="p")


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_the_sweep_expires_a_held_ticket_behind_hundreds_of_pending_samples(make_gateway, request, store):
    url = request.getfixturevalue("redis_url") if store == "redis" else "embedded"
    async with make_gateway(store=url, policy={"review": {"timeout": "300ms"}}) as gw:
        queue = gw.gateway.review
        queue._sweeper.cancel()  # swept below, once
        for n in range(1200):  # samples wait for a reviewer with no deadline: older than the held ticket
            queue.add_sample(_sample(n))
        await queue._flush_samples()
        await gw.client.put("/admin/oversight/global", json={"level": 3, "reason": "review"}, headers=auth("operator"))
        held = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
        soonest = (await queue.pending_summary(limit=100))["next_expiry"]  # the metrics see it too
        assert soonest["demo"] == held.json()["expires_at"]
        assert await queue.expire_due(time.time() + 1) == 1
        final = await gw.client.get(held.headers["location"], headers=auth("client"))
        assert final.status_code == 403 and final.json()["error"]["type"] == "expired"
        assert len(await gw.gateway.review.list(kind="sample", limit=2000)) == 1200  # the samples stay for their reviewer
        assert await gw.gateway.store.query(DEADLINES) == []  # the expired ticket's deadline went with it


async def test_a_decided_ticket_leaves_no_deadline_and_an_orphan_deadline_is_dropped(make_gateway):
    async with make_gateway() as gw:
        queue, store = gw.gateway.review, gw.gateway.store
        queue._sweeper.cancel()
        await gw.client.put("/admin/oversight/global", json={"level": 3, "reason": "review"}, headers=auth("operator"))
        held = (await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))).json()
        assert [d["id"] for d in await store.query(DEADLINES)] == [held["ticket"]]
        r = await gw.client.post(f"/review/tickets/{held['ticket']}/decision", json={"action": "approve"},
                                 headers=auth("reviewer"))
        assert r.status_code == 200 and await store.query(DEADLINES) == []
        # a deadline whose ticket never got stored (the gateway stopped between the two writes)
        await store.insert(DEADLINES, "tk_gone", {"id": "tk_gone", "status": "pending", "model": "demo", "expires_at": 1.0})
        assert await queue.expire_due() == 0 and await store.query(DEADLINES) == []


async def test_a_pending_ticket_stored_without_a_deadline_gets_one_at_start(make_gateway, tmp_path):
    directory = tmp_path / "older"
    async with make_gateway(directory=directory, policy={"review": {"timeout": "300ms"}}) as gw:
        await gw.client.put("/admin/oversight/global", json={"level": 3, "reason": "review"}, headers=auth("operator"))
        held = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
        await gw.gateway.store.delete(DEADLINES, held.json()["ticket"])  # as a gateway before deadlines stored it
    async with make_gateway(directory=directory, policy={"review": {"timeout": "300ms"}}) as gw:
        gw.gateway.review._sweeper.cancel()
        assert await gw.gateway.review.expire_due(time.time() + 1) == 1
