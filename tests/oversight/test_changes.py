"""Changing levels: reasons, bounds, two operators to lower from 3 or 4, and nothing changed by a bad call."""

from __future__ import annotations

import pytest

from tests.support import auth


async def _levels(gw):
    return (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()


@pytest.mark.parametrize("body, status, message", [
    ({"level": 5, "reason": "x"}, 400, "less than or equal to 4"),
    ({"level": -1, "reason": "x"}, 400, "greater than or equal to 0"),
    ({"level": "high", "reason": "x"}, 400, "valid integer"),
    ({"level": 2}, 400, "reason: required field is missing"),
    ({"level": 2, "reason": ""}, 400, "reason"),
    ({"level": 2, "reason": "   "}, 400, "a reason is required"),
])
async def test_bad_level_changes_are_refused_and_change_nothing(make_gateway, body, status, message):
    async with make_gateway() as gw:
        before = await _levels(gw)
        r = await gw.client.put("/admin/oversight/global", json=body, headers=auth("operator"))
        assert r.status_code == status and message in r.json()["error"]["message"], r.text
        after = await _levels(gw)
        assert after["global"] == before["global"] and after["history"] == before["history"]


async def test_unknown_model_and_wrong_roles(make_gateway):
    async with make_gateway() as gw:
        r = await gw.client.put("/admin/oversight/models/nope", json={"level": 2, "reason": "x"}, headers=auth("operator"))
        assert r.status_code == 404
        for who in ("client", "reviewer", "auditor"):
            r = await gw.client.put("/admin/oversight/global", json={"level": 2, "reason": "x"}, headers=auth(who))
            assert r.status_code == 403, who
            assert (await gw.client.post("/admin/kill", json={"reason": "x"}, headers=auth(who))).status_code == 403
        assert (await gw.client.post("/admin/kill", json={}, headers=auth("operator"))).status_code == 400
        assert (await gw.client.get("/admin/oversight", headers=auth("auditor"))).status_code == 200
        assert (await _levels(gw))["global"]["level"] == 0


async def test_raising_takes_one_operator_and_lowering_from_3_takes_two(make_gateway):
    async with make_gateway() as gw:
        up = await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "incident"}, headers=auth("operator"))
        assert up.status_code == 200 and up.json()["level"] == 3
        down = await gw.client.put("/admin/oversight/models/demo", json={"level": 1, "reason": "resolved"}, headers=auth("operator"))
        assert down.status_code == 202 and down.json()["status"] == "pending_approval"
        change = down.json()["change"]["id"]
        assert (await _levels(gw))["models"]["demo"]["level"] == 3  # not yet
        same = await gw.client.post(f"/admin/oversight/changes/{change}/approve", headers=auth("operator"))
        assert same.status_code == 403 and "second, different operator" in same.json()["error"]["message"]
        ok = await gw.client.post(f"/admin/oversight/changes/{change}/approve", json={"reason": "checked"}, headers=auth("operator2"))
        assert ok.status_code == 200 and ok.json()["level"] == 1
        levels = await _levels(gw)
        assert levels["models"]["demo"]["level"] == 1
        assert levels["models"]["demo"]["approved_by"] == "test-operator2"
        assert levels["history"][0]["action"] == "lower_approved"
        assert levels["pending_changes"] == []
        again = await gw.client.post(f"/admin/oversight/changes/{change}/approve", headers=auth("operator2"))
        assert again.status_code == 409


async def test_lowering_from_2_takes_one_operator(make_gateway):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/global", json={"level": 2, "reason": "watch"}, headers=auth("operator"))
        r = await gw.client.put("/admin/oversight/global", json={"level": 0, "reason": "fine"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["level"] == 0


async def test_a_stale_approval_is_refused(make_gateway):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/global", json={"level": 3, "reason": "watch"}, headers=auth("operator"))
        down = await gw.client.put("/admin/oversight/global", json={"level": 0, "reason": "ok"}, headers=auth("operator"))
        await gw.client.post("/admin/kill", json={"reason": "worse now"}, headers=auth("operator2"))
        r = await gw.client.post(f"/admin/oversight/changes/{down.json()['change']['id']}/approve", headers=auth("operator2"))
        assert r.status_code == 409 and "changed meanwhile" in r.json()["error"]["message"]
        assert (await _levels(gw))["global"]["level"] == 4


async def test_the_policy_can_allow_one_operator_to_lower(make_gateway):
    async with make_gateway(policy={"oversight": {"two_person_lowering": False}}) as gw:
        await gw.client.post("/admin/kill", json={"reason": "stop"}, headers=auth("operator"))
        r = await gw.client.put("/admin/oversight/global", json={"level": 0, "reason": "ok"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["level"] == 0
