"""Reviewing: claims, final decisions, verdicts on samples, and every malformed or forbidden attempt."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from tests.support import auth, gateway_factory

APPLICANT = {"applicant": {"id": "rv-1"}}


@pytest.fixture
async def held(make_gateway):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "r"}, headers=auth("operator"))
        r = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
        yield gw, r.json()["ticket"]


async def _ticket(gw, ticket_id):
    return (await gw.client.get(f"/review/tickets/{ticket_id}", headers=auth("reviewer"))).json()


async def test_a_claim_keeps_other_reviewers_off(held):
    gw, ticket = held
    claimed = await gw.client.post(f"/review/tickets/{ticket}/claim", headers=auth("reviewer"))
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "test-reviewer"
    other = await gw.client.post(f"/review/tickets/{ticket}/claim", headers=auth("reviewer2"))
    assert other.status_code == 409 and other.json()["error"]["claimed_by"] == "test-reviewer"
    refused = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "reject"}, headers=auth("reviewer2"))
    assert refused.status_code == 409
    assert (await gw.client.post(f"/review/tickets/{ticket}/release", headers=auth("reviewer2"))).status_code == 409
    assert (await gw.client.post(f"/review/tickets/{ticket}/release", headers=auth("reviewer"))).status_code == 200
    decided = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "reject"}, headers=auth("reviewer2"))
    assert decided.status_code == 200


async def test_a_decision_is_final(held):
    gw, ticket = held
    assert (await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve"}, headers=auth("reviewer"))).status_code == 200
    again = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "reject"}, headers=auth("reviewer2"))
    assert again.status_code == 409 and "already decided" in again.json()["error"]["message"]
    assert (await _ticket(gw, ticket))["decision"]["action"] == "approve"


@pytest.mark.parametrize("body, message", [
    ({}, "give `action`"),
    ({"action": "maybe"}, "action"),
    ({"action": "approve", "verdict": "agree"}, "give `action`"),
    ({"action": "override"}, "needs `response`"),
    ({"action": "approve", "response": {"x": 1}}, "only with action override"),
    ({"action": "approve", "answer_text": "yes"}, "only with action override"),
    ({"action": "override", "answer_text": "yes", "response": {"x": 1}}, "not both"),
    ({"action": "override", "answer_text": "approved"}, "`answer_text` is for OpenAI clients"),  # a generic JSON model
    ({"action": "reject", "extra": 1}, "unknown field"),
    ({"verdict": "agree"}, "takes an `action`"),
    ("not an object", "valid dictionary"),
])
async def test_malformed_decisions_are_400_and_change_nothing(held, body, message):
    gw, ticket = held
    r = await gw.client.post(f"/review/tickets/{ticket}/decision", json=body, headers=auth("reviewer"))
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert (await _ticket(gw, ticket))["status"] == "pending"


async def test_not_json_is_400(held):
    gw, ticket = held
    r = await gw.client.post(f"/review/tickets/{ticket}/decision", content=b"{nope", headers=auth("reviewer"))
    assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request"


async def test_unknown_tickets_and_wrong_roles(held):
    gw, ticket = held
    assert (await gw.client.post("/review/tickets/tk_nope/decision", json={"action": "reject"}, headers=auth("reviewer"))).status_code == 404
    assert (await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "reject"}, headers=auth("client"))).status_code == 403
    assert (await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "reject"}, headers=auth("operator"))).status_code == 403
    assert (await gw.client.get("/review/tickets", headers=auth("client"))).status_code == 403
    assert (await gw.client.get("/review/tickets?status=weird", headers=auth("reviewer"))).status_code == 400
    assert (await _ticket(gw, ticket))["status"] == "pending"


async def test_a_reviewer_cannot_decide_a_request_their_own_token_made(tmp_path, demo):
    make = gateway_factory(tmp_path, {"demo": {"v1": demo.url}})
    both = {"id": "alice", "roles": ["client", "reviewer"], "sha256": hashlib.sha256(b"gw_alice").hexdigest()}
    async with make() as gw:
        config = yaml.safe_load(gw.gateway.config.source.read_text())
    config["tokens"].append(both)
    path = tmp_path / "alice.yaml"
    path.write_text(yaml.safe_dump(config))
    from tests.support import serve_in_process

    async with serve_in_process(path) as gw:
        await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "r"}, headers=auth("operator"))
        alice = {"authorization": "Bearer gw_alice"}
        ticket = (await gw.client.post("/models/demo/predict", json=APPLICANT, headers=alice)).json()["ticket"]
        r = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve"}, headers=alice)
        assert r.status_code == 403 and "cannot also review" in r.json()["error"]["message"]
        assert (await _ticket(gw, ticket))["status"] == "pending"


async def test_samples_take_verdicts(make_gateway):
    async with make_gateway(policy={"defaults": {"sample_rate": {0: 1.0}}}) as gw:
        served = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
        assert served.status_code == 200 and served.headers["x-oversight-route"] == "auto"  # sampling is not shown
        from tests.support import eventually

        async def sample():
            tickets = (await gw.client.get("/review/tickets?kind=sample", headers=auth("reviewer"))).json()["tickets"]
            return tickets[0]["id"] if tickets else None

        ticket = await eventually(sample)
        wrong = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve"}, headers=auth("reviewer"))
        assert wrong.status_code == 400 and "verdict" in wrong.json()["error"]["message"]
        r = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"verdict": "disagree", "note": "should deny"},
                                 headers=auth("reviewer"))
        assert r.status_code == 200 and r.json()["decision"]["verdict"] == "disagree"
        assert (await gw.client.get(f"/v1/decisions/{ticket}", headers=auth("client"))).status_code == 404
