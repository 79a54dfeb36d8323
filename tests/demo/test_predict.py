"""The credit-decision model: deterministic, ~70 % approvals, per-group skew."""

from __future__ import annotations

import http.client
import json
import math
from urllib.parse import urlsplit

import httpx

from tests.demo.conftest import start_demo

N = 2000


def _decide_all(url: str, applicants: list[dict]) -> list[dict]:
    """POST every applicant to /predict over one keep-alive connection.

    Plain http.client: thousands of requests take a fraction of a second, where a
    heavier client would make the statistics tests slow.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    out = []
    try:
        for applicant in applicants:
            conn.request("POST", "/predict", body=json.dumps({"applicant": applicant}), headers={"content-type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body
            out.append(json.loads(body))
    finally:
        conn.close()
    return out


def _rate(answers: list[dict]) -> float:
    return sum(a["decision"] == "approve" for a in answers) / len(answers)


def _within(rate: float, expected: float, n: int) -> bool:
    """Within 4 standard deviations of a binomial proportion."""
    return abs(rate - expected) <= 4 * math.sqrt(expected * (1 - expected) / n)


def _applicants(group: str, n: int = N, start: int = 0) -> list[dict]:
    return [{"id": f"app-{i}", "group": group, "income": 30_000 + 17 * i} for i in range(start, start + n)]


def test_predict_answer_shape(client):
    r = client.post("/predict", json={"applicant": {"id": 7, "group": "A", "income": 52000}})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"decision", "confidence", "group", "model"}
    assert body["decision"] in ("approve", "deny")
    assert body["confidence"] == 0.92 and r.headers["x-model-confidence"] == "0.92"
    assert body["group"] == "A" and body["model"] == "demo-test"


def test_predict_forced_confidence(client):
    r = client.post("/predict", json={"applicant": {"id": 1, "group": "A"}}, headers={"X-Demo-Confidence": "0.79"})
    assert r.json()["confidence"] == 0.79
    assert r.headers["x-model-confidence"] == "0.79"


def test_decisions_are_deterministic_and_about_70_percent(client, demo_server):
    applicants = _applicants("A")
    first = _decide_all(demo_server.url, applicants)
    assert _within(_rate(first), 0.7, N), _rate(first)
    again = _decide_all(demo_server.url, applicants[:400])
    assert [a["decision"] for a in again] == [a["decision"] for a in first[:400]]


def test_applicants_without_id_are_identified_by_their_fields_but_the_group(demo_server):
    people = [{"income": 20_000 + 250 * i, "age": 20 + i % 50} for i in range(300)]
    as_a = _decide_all(demo_server.url, [{**p, "group": "A"} for p in people])
    as_b = _decide_all(demo_server.url, [{**p, "group": "B"} for p in people])
    again = _decide_all(demo_server.url, [{**p, "group": "A"} for p in people])
    assert as_a == again
    # Without a skew the group changes nothing; the fields alone decide (about 70 % yes).
    assert [a["decision"] for a in as_a] == [b["decision"] for b in as_b]
    assert _within(_rate(as_a), 0.7, len(people)), _rate(as_a)


def test_skew_changes_one_groups_approval_rate(client, demo_server):
    assert client.post("/_demo/config", json={"skew": {"B": 0.3}}).status_code == 200
    as_a = _decide_all(demo_server.url, _applicants("A"))
    as_b = _decide_all(demo_server.url, _applicants("B"))  # the same people, only the group differs
    assert _within(_rate(as_a), 0.7, N), _rate(as_a)
    assert _within(_rate(as_b), 0.3, N), _rate(as_b)
    # The group acts only through the skew: whoever B approves, A approves too.
    assert all(a["decision"] == "approve" for a, b in zip(as_a, as_b) if b["decision"] == "approve")


def test_skew_from_the_command_line_survives_reset():
    server = start_demo("--skew", "B=0.3", "--skew", "C=0.9", "--approval-rate", "0.5")
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            state = client.get("/_demo/state").json()
            assert state["skew"] == {"B": 0.3, "C": 0.9} and state["approval_rate"] == 0.5
            client.post("/_demo/config", json={"skew": {}, "approval_rate": 0.7})
            client.post("/_demo/reset")
            assert client.get("/_demo/state").json()["skew"] == {"B": 0.3, "C": 0.9}
        n = 600
        rates = {g: _rate(_decide_all(server.url, _applicants(g, n))) for g in "ABC"}
        assert _within(rates["A"], 0.5, n) and _within(rates["B"], 0.3, n) and _within(rates["C"], 0.9, n), rates
    finally:
        server.stop()


def test_bad_predict_requests_are_400_json(client):
    for body in [b"{oops", b'{"applicant": 3}', b'{"person": {}}', b"[]"]:
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == 400
