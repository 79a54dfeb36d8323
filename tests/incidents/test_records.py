"""Incidents as values: the document the store and the API hold round-trips, fields of a newer gateway kept."""

from __future__ import annotations

import json

from gateway.incidents.records import ActionTaken, Event, Incident


def _incident() -> Incident:
    return Incident(id="inc_1", cause="error_rate:credit:v2", status="open", category="performance",
                    trigger="error_rate", severity="high", model="credit", version="v2", summary="errors",
                    values={"error_rate": 0.02}, since=100.0, until=400.0, opened_at=400.0, opened_by="gateway",
                    timeline=(Event(400.0, "detected", "gateway", "errors", {"error_rate": 0.02}),),
                    actions=(ActionTaken("raise level", True, "credit level 0 -> 1", 401.0),))


def test_an_incident_survives_the_store_boundary_unchanged():
    incident = _incident().with_event(Event(402.0, "action", "gateway", "legal hold: held", ok=True), hold="hold_inc_1")
    assert Incident.from_doc(json.loads(json.dumps(incident.to_doc()))) == incident


def test_the_document_keeps_the_api_shape():
    doc = _incident().to_doc()
    assert doc["window"] == {"since": 100.0, "until": 400.0}
    assert doc["timeline"][0]["type"] == "detected" and doc["actions"][0]["ok"] is True
    assert "resolved_by" not in doc  # only what happened


def test_fields_a_newer_gateway_wrote_are_kept():
    doc = {**_incident().to_doc(), "postmortem": {"owner": "alice"}}
    assert Incident.from_doc(doc).to_doc()["postmortem"] == {"owner": "alice"}


def test_command_roles_round_trip():
    doc = {**_incident().to_doc(), "roles": {"incident_commander": {"who": "alice", "by": "ops", "at": 1.0}}}
    assert Incident.from_doc(doc).roles["incident_commander"]["who"] == "alice"
    assert Incident.from_doc(doc).to_doc()["roles"] == doc["roles"]


def test_counting_timeline_events():
    incident = _incident().with_event(Event(1.0, "note", "ops", "a")).with_event(Event(2.0, "note", "ops", "b"))
    assert (incident.count("note"), incident.count("detected"), incident.count("resolved")) == (2, 1, 0)
