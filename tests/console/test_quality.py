"""The console's part in output quality: a verdict's reason, appeals in the queue, users' reports on the dashboard.

Over HTTP with a signed-in session (forms and their CSRF token), against a real gateway.
"""

from __future__ import annotations

from tests.support import auth, console_session, eventually

POLICY = {"triggers": {"evaluate_every": "1h"}, "defaults": {"sample_rate": {0: 1.0}},
          "models": {"demo": {"feedback_window": "1h"}}}


async def _sampled(gw) -> dict:
    r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": "c-1"}}, headers=auth("client"))
    async def stored():
        found = (await gw.client.get("/review/tickets?kind=sample", headers=auth("reviewer"))).json()["tickets"]
        return found[0] if found else None

    return {"request_id": r.headers["x-request-id"], "ticket": await eventually(stored)}


async def test_a_reviewer_gives_the_reason_an_answer_was_wrong(make_gateway):
    async with make_gateway(policy=POLICY) as gw:
        ticket = (await _sampled(gw))["ticket"]
        session = await console_session(gw.client, "reviewer")
        page = await gw.client.get(f"/console/review/{ticket['id']}", headers={**session, "accept": "text/html"})
        assert '<select id="reason" name="reason">' in page.text and '<option value="gibberish">' in page.text
        bad = await gw.client.post(f"/console/review/{ticket['id']}/decide", headers=session,
                                   data={"decision": "disagree", "reason": "ugly", "csrf_token": session["x-csrf-token"]})
        assert bad.status_code == 400
        ok = await gw.client.post(f"/console/review/{ticket['id']}/decide", headers=session,
                                  data={"decision": "disagree", "reason": "gibberish", "note": "word salad",
                                        "csrf_token": session["x-csrf-token"]})
        assert ok.status_code in (200, 303), ok.text
        decided = (await gw.client.get(f"/review/tickets/{ticket['id']}", headers=auth("reviewer"))).json()
        assert decided["decision"]["reason"] == "gibberish"


async def test_appeals_are_in_the_queue_and_reports_are_counted_on_the_dashboard(make_gateway):
    async with make_gateway(policy=POLICY) as gw:
        rid = (await _sampled(gw))["request_id"]
        r = await gw.client.post("/v1/reports", json={"request_id": rid, "category": "harmful", "text": "rude", "appeal": True},
                                 headers=auth("client"))
        assert r.status_code == 201
        reviewer = await console_session(gw.client, "reviewer")
        queue = await gw.client.get("/console/review?kind=appeal", headers={**reviewer, "accept": "text/html"})
        assert r.json()["appeal"]["ticket"] in queue.text and '<span class="kind appeal">appeal</span>' in queue.text
        ticket = await gw.client.get(f"/console/review/{r.json()['appeal']['ticket']}", headers={**reviewer, "accept": "text/html"})
        assert "appeal by the client" in ticket.text and 'value="agree"' in ticket.text
        await gw.gateway.monitor.flush()
        operator = await console_session(gw.client, "operator")
        dashboard = await gw.client.get("/console", headers={**operator, "accept": "text/html"})
        assert 'data-reports="1"' in dashboard.text and "harmful 1" in dashboard.text
