"""Tickets as values: the store's document round-trips, and a closed ticket becomes the client's answer."""

from __future__ import annotations

import json

import pytest

from gateway.review.tickets import DECIDED, EXPIRED, Decision, DecisionIn, HeldRequest, Recommendation, Ticket, final_answer


def _ticket(**changes) -> Ticket:
    request = HeldRequest("POST", "/predict", (("content-type", "application/json"),), b'{"applicant": {"id": "a"}}')
    answer = Recommendation.of(200, [(b"content-type", b"application/json"), (b"content-length", b"17")], b'{"decision":"ok"}')
    ticket = Ticket.new(kind="hold", request_id="r-1", caller="ci", model="credit", version="v2", level=3,
                        reason="every answer is reviewed", request=request, recommendation=answer, confidence=0.9,
                        timeout=60.0, policy_version="default-1")
    return Ticket(**{**{f: getattr(ticket, f) for f in ticket.__dataclass_fields__}, **changes})


def test_a_ticket_survives_the_store_boundary_unchanged():
    binary = HeldRequest("POST", "/x", (), b"\xff\x00binary")
    for ticket in (_ticket(), _ticket(request=binary, recommendation=None),
                   _ticket(status=DECIDED, decision=Decision("rev", 5.0, "ok", action="override", response={"a": 1}, status=201))):
        doc = json.loads(json.dumps(ticket.to_doc()))  # what the store keeps is JSON
        assert Ticket.from_doc(doc) == ticket


def test_bodies_are_text_in_the_document_when_they_are_text():
    doc = _ticket().to_doc()
    assert doc["request"]["body_encoding"] == "utf-8" and doc["recommendation"]["body"] == '{"decision":"ok"}'
    assert _ticket(request=HeldRequest("POST", "/", (), b"\xff")).to_doc()["request"]["body_encoding"] == "base64"


def test_approve_serves_the_model_answer_without_its_old_length():
    ticket = _ticket(status=DECIDED, decision=Decision("rev", 1.0, action="approve"))
    status, headers, body = final_answer(ticket)
    assert (status, body) == (200, b'{"decision":"ok"}')
    assert (b"content-length", b"17") not in headers and (b"x-decision", b"approve") in headers
    assert (b"x-decided-by", b"rev") in headers and (b"x-ticket", ticket.id.encode()) in headers


def test_override_serves_the_reviewers_answer_and_reject_and_expiry_are_403():
    status, _, body = final_answer(_ticket(status=DECIDED, decision=Decision("rev", 1.0, action="override",
                                                                             response={"decision": "deny"}, status=200)))
    assert (status, json.loads(body)) == (200, {"decision": "deny"})
    status, _, body = final_answer(_ticket(status=DECIDED, decision=Decision("rev", 1.0, "income unverified", action="reject")))
    assert status == 403 and json.loads(body)["error"]["type"] == "rejected" and "income unverified" in body.decode()
    status, _, body = final_answer(_ticket(status=EXPIRED, decision=Decision("policy:on_expiry", 1.0, action="reject")))
    assert status == 403 and json.loads(body)["error"]["type"] == "expired"


@pytest.mark.parametrize("given", [{}, {"action": "approve", "verdict": "agree"}, {"action": "override"},
                                   {"action": "approve", "response": {"x": 1}}])
def test_a_decision_has_one_shape(given):
    with pytest.raises(ValueError):
        DecisionIn.model_validate(given)


def test_a_decision_in_becomes_a_decision_by_its_reviewer():
    decision = DecisionIn(action="override", response={"x": 1}, status=201, note="n").by("rev", 7.0)
    assert decision == Decision("rev", 7.0, "n", action="override", response={"x": 1}, status=201)
    assert DecisionIn(verdict="agree").by("rev", 1.0).outcome == "agree"
