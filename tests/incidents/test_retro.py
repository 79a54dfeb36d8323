"""Retro-reviews and the watch, at their edges: filters, the limit, refusals; a rollback's watch raises to level 1."""

from __future__ import annotations

import pytest

from gateway.demo.model import applicant_score
from tests.support import auth, eventually, gateway_factory, start_demo

FAIRNESS = {"group_pointer": "/applicant/group", "outcome_pointer": "/decision", "favourable": "approve"}


@pytest.fixture(scope="module")
def demos():
    models = start_demo("--name", "demo-v1"), start_demo("--name", "demo-v2")
    yield models
    for m in models:
        m.stop()


@pytest.fixture
def make(tmp_path, demos):
    return gateway_factory(tmp_path, {"credit": {"v1": demos[0].url, "v2": demos[1].url}})


POLICY = {"oversight": {"record_all_from_level": 0},
          "incidents": {"replica_wait": "0.1s", "retro_review_limit": 5, "post_rollback_watch": "1s"},
          "models": {"credit": {"fairness": FAIRNESS}}}


async def _incident(gw, **body) -> str:
    r = await gw.client.post("/admin/incidents", json={"category": "bias", "severity": "medium", "summary": "drill", **body},
                             headers=auth("operator"))
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_filters_and_the_limit(make):
    async with make(policy=POLICY) as gw:
        ids = [f"r-{i}" for i in range(12)]
        for i in ids:
            await gw.client.post("/models/credit/predict", json={"applicant": {"id": i, "group": "A"}}, headers=auth("client"))
        incident = await _incident(gw, model="credit")
        approved = sum(applicant_score({"id": i}) < 0.7 for i in ids)
        r = await gw.client.post(f"/admin/incidents/{incident}/retro-reviews",
                                 json={"outcome": "approve", "group": "A", "reason": "audit"}, headers=auth("operator"))
        assert r.status_code == 201 and r.json()["total"] == min(5, approved) and r.json()["truncated"] == (approved > 5)
        none = await gw.client.post(f"/admin/incidents/{incident}/retro-reviews",
                                    json={"group": "Z", "reason": "nobody"}, headers=auth("operator"))
        assert none.json()["total"] == 0 and none.json()["status"] == "done"  # nothing to review is done at once
        tickets = (await gw.client.get("/review/tickets", params={"kind": "sample"}, headers=auth("reviewer"))).json()
        assert len(tickets["tickets"]) == min(5, approved)


@pytest.mark.parametrize("body, status, words", [
    ({"group": "A"}, 400, "reason"),
    ({"reason": "r", "group": 7}, 400, "group"),
])
async def test_bad_retro_review_requests(make, body, status, words):
    async with make(policy=POLICY) as gw:
        incident = await _incident(gw, model="credit")
        r = await gw.client.post(f"/admin/incidents/{incident}/retro-reviews", json=body, headers=auth("operator"))
        assert r.status_code == status and words in r.json()["error"]["message"]


async def test_refusals_name_what_is_missing(make):
    async with make(policy=POLICY) as gw:
        gateway_wide = await _incident(gw)
        r = await gw.client.post(f"/admin/incidents/{gateway_wide}/retro-reviews", json={"reason": "r"}, headers=auth("operator"))
        assert r.status_code == 400 and "names no model" in r.json()["error"]["message"]
        r = await gw.client.post("/admin/incidents/inc_nope/retro-reviews", json={"reason": "r"}, headers=auth("operator"))
        assert r.status_code == 404
        r = await gw.client.get("/admin/incidents/inc_nope/affected", headers=auth("auditor"))
        assert r.status_code == 404
        r = await gw.client.get(f"/admin/incidents/{gateway_wide}/affected", params={"format": "xml"}, headers=auth("auditor"))
        assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request"
        assert (await gw.client.post(f"/admin/incidents/{gateway_wide}/retro-reviews", json={"reason": "r"},
                                     headers=auth("auditor"))).status_code == 403


async def test_an_operators_rollback_starts_a_watch_at_level_1(make):
    async with make(policy=POLICY) as gw:
        assert (await gw.client.post("/admin/models/credit/activate", json={"version": "v2", "reason": "release"},
                                     headers=auth("operator"))).status_code == 200
        incident = await _incident(gw, model="credit")
        r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "suspect"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["to"] == "v1"

        async def level():
            doc = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()
            return doc["models"]["credit"]["level"] == 1
        await eventually(level, timeout=5)

        async def compared():
            doc = (await gw.client.get(f"/admin/incidents/{incident}", headers=auth("operator"))).json()
            return next((e for e in doc["timeline"] if e["type"] == "post_rollback_watch"), None)
        event = await eventually(compared, timeout=10, interval=0.1)
        assert "post-rollback watch of credit v1" in event["text"] and event["values"]["version"] == "v1"
        doc = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()
        assert doc["models"]["credit"]["level"] == 1  # the watch never lowers: that stays an operator's call
