"""A ticket's deadline holds whenever the expiry sweep runs: a decision sent after it finds the ticket expired."""

from __future__ import annotations

import asyncio
import time

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
