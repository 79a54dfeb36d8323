"""Users' reports and appeals: `POST /v1/reports` on the caller's own requests, re-review, and a pattern of reports."""

from __future__ import annotations

import pytest

from tests.support import auth, eventually, gateway_factory, kept_state


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


def _policy(threshold: int = 5) -> dict:
    return {"triggers": {"evaluate_every": "1h", "user_reports": {"threshold": threshold}},
            "models": {"demo": {"feedback_window": "1h"}}}


async def _request(gw, token: str = "client") -> str:
    r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": "r-1"}}, headers=auth(token))
    assert r.status_code == 200
    return r.headers["x-request-id"]


async def _report(gw, rid: str, token: str = "client", **body):
    return await gw.client.post("/v1/reports", json={"request_id": rid, "category": "false", "text": "wrong", **body},
                                headers=auth(token))


async def _state(gw) -> dict:
    """What a refused report must not change. Taken once the start-up verification is recorded, which a busy
    machine may write a moment after the gateway listens."""
    log = gw.gateway.recorder.log

    async def verified():
        return any(log.get(i).get("action") == "verification" for i in range(log.size))

    await eventually(verified)
    return {**await kept_state(gw.gateway), "reports": await gw.gateway.store.query("reports", limit=1000)}


def _records(gw) -> list[dict]:
    log = gw.gateway.recorder.log
    return [log.get(i) for i in range(log.size)]


async def test_a_report_is_stored_counted_and_recorded_with_who_and_why(make):
    async with make(policy=_policy()) as gw:
        rid = await _request(gw)
        r = await _report(gw, rid, category="discrimination", text="denied because of where I live")
        assert r.status_code == 201, r.text
        report = r.json()
        assert (report["request_id"], report["model"], report["version"], report["category"], report["appeal"]) == (
            rid, "demo", "v1", "discrimination", None)
        (record,) = [x for x in _records(gw) if x.get("action") == "user_report"]
        assert (record["actor"], record["reason"], record["request_id"], record["category"]) == (
            "test-client", "denied because of where I live", rid, "discrimination")
        again = await _report(gw, rid)
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        shown = await gw.client.get(f"/v1/reports/{report['id']}", headers=auth("client"))
        assert shown.status_code == 200 and shown.json() == report


async def test_only_the_client_that_made_the_request_may_report_it(make):
    async with make(policy=_policy()) as gw:
        rid = await _request(gw, "client")
        before = await _state(gw)
        other = await _report(gw, rid, "client2", appeal=True)
        assert other.status_code == 404
        error = other.json()["error"]
        assert set(error) >= {"message", "type", "param", "code", "request_id"}
        assert (error["type"], error["param"]) == ("invalid_request_error", "request_id")
        assert (await _report(gw, "no-such-request")).status_code == 404
        reviewer = await _report(gw, rid, "reviewer")
        assert reviewer.status_code == 403
        assert await _state(gw) == before  # refused: nothing stored, queued or recorded


@pytest.mark.parametrize("body, param", [
    ({"request_id": "x", "category": "rude"}, "category"),
    ({"request_id": "x", "category": "false", "appeal": "yes"}, "appeal"),
    ({"request_id": "", "category": "false"}, "request_id"),
    ({"category": "false"}, "request_id"),
    ({"request_id": "x", "category": "false", "extra": 1}, "extra"),
])
async def test_a_bad_report_is_refused_in_the_openai_shape_and_changes_nothing(make, body, param):
    async with make(policy=_policy()) as gw:
        before = await _state(gw)
        r = await gw.client.post("/v1/reports", json=body, headers=auth("client"))
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and param in error["message"] and error["request_id"]
        assert await _state(gw) == before


async def test_requests_older_than_the_feedback_window_cannot_be_reported(make):
    async with make(policy={"triggers": {"evaluate_every": "1h"}}) as gw:  # no feedback_window: nothing remembered
        rid = await _request(gw)
        assert (await _report(gw, rid)).status_code == 404


async def test_an_appeal_is_re_reviewed_and_its_outcome_is_the_clients_to_read(make):
    async with make(policy=_policy()) as gw:
        rid = await _request(gw)
        r = await _report(gw, rid, category="discrimination", text="please look again", appeal=True)
        report = r.json()
        assert report["appeal"]["status"] == "pending"
        ticket = (await gw.client.get(f"/review/tickets/{report['appeal']['ticket']}", headers=auth("reviewer"))).json()
        assert (ticket["kind"], ticket["request_id"], ticket["caller"]) == ("appeal", rid, "test-client")
        assert "please look again" in ticket["reason"]
        url = f"/review/tickets/{ticket['id']}/decision"
        assert (await gw.client.post(url, json={"action": "approve"}, headers=auth("reviewer"))).status_code == 400
        decided = await gw.client.post(url, json={"verdict": "disagree", "reason": "biased", "note": "reversed: approve"},
                                       headers=auth("reviewer"))
        assert decided.status_code == 200, decided.text
        outcome = (await gw.client.get(f"/v1/reports/{report['id']}", headers=auth("client"))).json()["appeal"]
        assert (outcome["status"], outcome["note"], outcome["decided_by"]) == ("reversed", "reversed: approve", "test-reviewer")
        assert (await gw.client.get(f"/v1/reports/{report['id']}", headers=auth("client2"))).status_code == 404
        assert (await gw.client.get(f"/v1/decisions/{ticket['id']}", headers=auth("client"))).status_code == 404
        decisions = [x for x in _records(gw) if x.get("action") == "review_decision"]
        assert decisions[-1]["request_id"] == rid and decisions[-1]["decision"]["appeal"] is True


@pytest.mark.parametrize("reporters, fires", [(2, True), (1, False)])
async def test_a_pattern_of_reports_from_more_callers_than_the_threshold_opens_an_incident(make, reporters, fires):
    async with make(policy=_policy(threshold=1)) as gw:
        for token in ("client", "client2")[:reporters]:
            for _ in range(3):  # several reports from one caller are still one caller
                assert (await _report(gw, await _request(gw, token), token, category="discrimination")).status_code == 201
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["user_reports"] if fires else [])
        if fires:
            assert opened[0]["category"] == "bias" and opened[0]["values"]["reporters"] == 2
            assert opened[0]["values"]["categories"] == {"discrimination": 6}
