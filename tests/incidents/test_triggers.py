"""Each default trigger fires just above its threshold and not just below it, driven through the demo model."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from scipy.stats import norm

from gateway.demo.model import applicant_score
from gateway.incidents.counters import MINUTE
from tests.support import auth, eventually, gateway_factory

FAIRNESS = {"group_pointer": "/applicant/group", "outcome_pointer": "/decision", "favourable": "approve"}
APPROVAL_RATE = 0.7  # the demo model's default


def applicants(decision: str, count: int, prefix: str) -> list[str]:
    """Applicant ids the demo model will decide `decision` for (its decisions follow the id's score)."""
    found, i = [], 0
    while len(found) < count:
        candidate = f"{prefix}-{i}"
        if (applicant_score({"id": candidate}) < APPROVAL_RATE) == (decision == "approve"):
            found.append(candidate)
        i += 1
    return found


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


def _policy(**demo_policy) -> dict:
    return {"triggers": {"evaluate_every": "1h"}, "models": {"demo": demo_policy}}


async def _send(gw, ids, group="A", concurrency=16):
    limit = asyncio.Semaphore(concurrency)

    async def one(applicant_id):
        async with limit:
            r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": applicant_id, "group": group}},
                                     headers=auth("client"))
            return r

    return await asyncio.gather(*(one(i) for i in ids))


async def _incidents(gw) -> list[dict]:
    return (await gw.client.get("/admin/incidents", headers=auth("operator"))).json()["incidents"]


async def _level(gw) -> int:
    return (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()["models"]["demo"]["level"]


# availability ------------------------------------------------------------------------
@pytest.mark.parametrize("failures, fires", [(11, True), (10, False), (9, False)])
async def test_error_rate_over_one_percent_of_1000(make, demo, failures, fires):
    async with make(policy=_policy()) as gw:
        demo.configure(fail_rate=failures / 1000, fail_status=500)
        answers = await _send(gw, [f"e-{i}" for i in range(1000)])
        assert sum(r.status_code == 500 for r in answers) == failures
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["error_rate"] if fires else [])
        assert await _level(gw) == (1 if fires else 0)


async def test_the_minimum_request_count_guards_the_error_rate(make, demo):
    async with make(policy=_policy()) as gw:
        demo.configure(fail_rate=0.5, fail_status=503)
        await _send(gw, [f"m-{i}" for i in range(99)])  # half fail, but 99 < min_requests (100)
        assert await gw.gateway.monitor.evaluate() == []


@pytest.mark.parametrize("latency_ms, fires", [(66, True), (54, False)])
async def test_latency_over_three_times_normal(make, demo, latency_ms, fires):
    async with make(policy=_policy(latency_baseline_ms=20)) as gw:  # 3x normal = 60 ms
        demo.configure(latency_ms=latency_ms)
        await _send(gw, [f"l-{i}" for i in range(60)], concurrency=4)  # few at once: the demo model adds no queueing
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["latency"] if fires else [])
        if fires:
            assert opened[0]["values"]["p50_ms"] == pytest.approx(latency_ms, rel=0.1)
            assert (opened[0]["severity"], await _level(gw)) == ("medium", 1)


@pytest.mark.parametrize("minutes_down, fires", [(31, True), (29, False)])
async def test_downtime_of_more_than_30_minutes(make, minutes_down, fires):
    async with make(policy=_policy()) as gw:
        now = time.time()
        # what the counters hold after an upstream refused every request for that long
        past = {f"t|demo|v1|{int((now - m * MINUTE) // MINUTE) * MINUTE}": {"requests": 3, "errors": 3, "unreachable": 3}
                for m in range(minutes_down)}
        await gw.gateway.store.add_counts(past, ttl=3600)
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["downtime"] if fires else [])
        assert await _level(gw) == 0  # notify only


async def test_an_unreachable_upstream_is_counted_as_such(tmp_path, demo):
    from tests.support import free_port

    make = gateway_factory(tmp_path, {"demo": {"v1": f"http://127.0.0.1:{free_port()}"}})
    async with make(policy=_policy()) as gw:
        await _send(gw, ["u-1", "u-2"])
        await gw.gateway.monitor.flush()
        counts = await gw.gateway.monitor.counters.traffic("demo", "v1", 120)
        assert (counts["unreachable"], counts["errors"], counts.get("reached", 0)) == (2, 2, 0)


# accuracy ----------------------------------------------------------------------------
async def _feedback(gw, request_ids, correct_count):
    for n, rid in enumerate(request_ids):
        r = await gw.client.post("/v1/feedback", json={"request_id": rid, "correct": n < correct_count}, headers=auth("client"))
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("correct, trigger, level", [(85, "accuracy_drop", 2), (86, None, 0), (80, "accuracy_drop_cumulative", 4),
                                                     (81, "accuracy_drop", 2)])
async def test_accuracy_drops_against_the_baseline(make, correct, trigger, level):
    async with make(policy=_policy(baseline_accuracy=0.9, feedback_window="1h")) as gw:
        answers = await _send(gw, [f"a-{i}" for i in range(100)])
        await _feedback(gw, [r.headers["x-request-id"] for r in answers], correct)
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == ([trigger] if trigger else [])
        assert await _level(gw) == level


async def test_accuracy_below_the_published_minimum_is_critical(make):
    async with make(policy=_policy(published_min_accuracy=0.95, feedback_window="1h")) as gw:
        answers = await _send(gw, [f"p-{i}" for i in range(100)])
        await _feedback(gw, [r.headers["x-request-id"] for r in answers], 94)
        (incident,) = await gw.gateway.monitor.evaluate()
        assert (incident["trigger"], incident["severity"]) == ("accuracy_drop_cumulative", "critical")


async def test_feedback_is_only_for_the_callers_own_recent_requests(make):
    async with make(policy=_policy(feedback_window="1h", fairness=FAIRNESS)) as gw:
        (answer,) = await _send(gw, ["f-1"])
        rid = answer.headers["x-request-id"]
        other = await gw.client.post("/v1/feedback", json={"request_id": rid, "correct": True}, headers=auth("client2"))
        assert other.status_code == 404
        bad = await gw.client.post("/v1/feedback", json={"request_id": rid}, headers=auth("client"))
        assert bad.status_code == 400
        label = await gw.client.post("/v1/feedback", json={"request_id": rid, "label": "approve"}, headers=auth("client"))
        assert label.status_code == 201 and label.json()["correct"] == (answer.json()["decision"] == "approve")
        again = await gw.client.post("/v1/feedback", json={"request_id": rid, "correct": True}, headers=auth("client"))
        assert again.status_code == 409
        unknown = await gw.client.post("/v1/feedback", json={"request_id": "nope", "correct": True}, headers=auth("client"))
        assert unknown.status_code == 404


async def test_reviewer_verdicts_count_as_ground_truth(make):
    async with make(policy={**_policy(baseline_accuracy=0.9), "defaults": {"sample_rate": {0: 1.0}}}) as gw:
        await _send(gw, [f"v-{i}" for i in range(100)])
        async def all_stored():  # sampled tickets are stored in batches, once a second
            found = (await gw.client.get("/review/tickets?kind=sample&limit=500", headers=auth("reviewer"))).json()["tickets"]
            return found if len(found) == 100 else None

        tickets = await eventually(all_stored)
        for n, ticket in enumerate(tickets):
            verdict = "agree" if n < 80 else "disagree"
            await gw.client.post(f"/review/tickets/{ticket['id']}/decision", json={"verdict": verdict}, headers=auth("reviewer"))
        (incident,) = await gw.gateway.monitor.evaluate()
        assert incident["trigger"] == "accuracy_drop_cumulative" and incident["values"]["accuracy"] == 0.8


# bias ----------------------------------------------------------------------------------
def _katz_upper(x1, n1, x2, n2):
    ratio = (x1 / n1) / (x2 / n2)
    return ratio * math.exp(norm.ppf(0.975) * math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2))


def _boundary(n: int, reference: int) -> int:
    """The most approvals out of n for group B whose ratio's upper bound is still below 0.80 (computed by hand)."""
    return max(x for x in range(1, n) if _katz_upper(x, n, reference, n) < 0.80)


@pytest.mark.parametrize("just", ["above", "below"])
async def test_disparate_impact_fires_on_the_upper_bound_of_its_interval(make, just):
    n, approved_a = 300, 210
    approved_b = _boundary(n, approved_a) + (0 if just == "above" else 1)
    async with make(policy=_policy(fairness=FAIRNESS)) as gw:
        await _send(gw, applicants("approve", approved_a, "da") + applicants("deny", n - approved_a, "dd"), group="A")
        await _send(gw, applicants("approve", approved_b, "ba") + applicants("deny", n - approved_b, "bd"), group="B")
        opened = await gw.gateway.monitor.evaluate()
        if just == "above":
            (incident,) = opened
            assert incident["trigger"] == "disparate_impact" and incident["category"] == "bias"
            assert incident["values"]["ratio"] == pytest.approx((approved_b / n) / (approved_a / n))
            assert incident["values"]["ratio_upper"] < 0.80
            assert await _level(gw) == 3
        else:
            assert opened == [] and await _level(gw) == 0


async def test_a_small_group_cannot_trip_disparate_impact_by_chance(make):
    async with make(policy=_policy(fairness=FAIRNESS)) as gw:
        await _send(gw, applicants("approve", 200, "sa"), group="A")
        await _send(gw, applicants("deny", 29, "sd"), group="B")  # 0 % approved, but only 29 < min_per_group (30)
        assert await gw.gateway.monitor.evaluate() == []


@pytest.mark.parametrize("missed_b, fires", [(11, True), (10, False)])
async def test_false_negative_rate_gap_over_five_points(make, missed_b, fires):
    # 100 truly favourable applicants per group; the model misses 5 in A and `missed_b` in B
    async with make(policy=_policy(fairness=FAIRNESS, feedback_window="1h")) as gw:
        for group, missed in (("A", 5), ("B", missed_b)):
            answers = await _send(gw, applicants("deny", missed, f"fn{group}") + applicants("approve", 100 - missed, f"fp{group}"),
                                  group=group)
            for r in answers:
                fb = await gw.client.post("/v1/feedback", json={"request_id": r.headers["x-request-id"], "label": "approve"},
                                          headers=auth("client"))
                assert fb.status_code == 201
        opened = await gw.gateway.monitor.evaluate()
        triggers = [i["trigger"] for i in opened]
        assert ("fnr_gap" in triggers) == fires


# security ------------------------------------------------------------------------------
@pytest.mark.parametrize("refusals, fires", [(51, True), (50, False)])
async def test_a_burst_of_refused_credentials(make, refusals, fires):
    async with make(policy=_policy()) as gw:
        for _ in range(refusals):
            await gw.client.post("/models/demo/predict", json={}, headers={"authorization": "Bearer gw_guess"})
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["auth_failures"] if fires else [])
        if fires:
            assert opened[0]["values"]["source"] == "127.0.0.1" and opened[0]["category"] == "security"


async def test_a_changed_evidence_record_is_a_security_incident(make):
    async with make(policy=_policy()) as gw:
        await gw.client.put("/admin/oversight/global", json={"level": 1, "reason": "record all"}, headers=auth("operator"))
        log = gw.gateway.recorder.log
        await asyncio.to_thread(log.checkpoint_now)
        assert await gw.gateway.monitor.check_evidence() is None  # sets its starting point
        await _send(gw, [f"x-{i}" for i in range(5)])
        await asyncio.to_thread(log.checkpoint_now)
        last_auto = max(i for i in range(log.size) if log.get(i).get("route") == "auto")
        segment = sorted((gw.gateway.recorder.directory / "segments").glob("*.seg"))[-1]
        data = bytearray(segment.read_bytes())
        at = data.rindex(b'"route":"auto"') + len(b'"route":"')
        data[at:at + 4] = b"held"  # someone edits how a recorded request was routed

        segment.write_bytes(bytes(data))
        incident = await gw.gateway.monitor.check_evidence()
        assert incident["trigger"] == "evidence" and incident["category"] == "security"
        assert f"record {last_auto}" in incident["summary"]  # the changed record is named


# incidents ---------------------------------------------------------------------------
async def test_one_cause_opens_one_incident_and_its_actions_are_recorded(make, demo):
    async with make(policy=_policy()) as gw:
        demo.configure(fail_rate=0.05)
        await _send(gw, [f"o-{i}" for i in range(200)])
        (first,) = await gw.gateway.monitor.evaluate()
        (second,) = await gw.gateway.monitor.evaluate()
        assert first["id"] == second["id"]
        assert len(await _incidents(gw)) == 1
        incident = (await gw.client.get(f"/admin/incidents/{first['id']}", headers=auth("operator"))).json()
        actions = {a["action"]: a for a in incident["actions"]}
        assert actions["raise level"]["ok"] and "level 0 -> 1" in actions["raise level"]["result"]
        assert actions["legal hold"]["ok"] and actions["snapshot"]["ok"]
        holds = gw.gateway.recorder.log.legal_holds()
        assert incident["hold"] in holds and holds[incident["hold"]]["since"] <= incident["opened_at"] - 250
        history = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()["history"]
        assert history[0]["actor"] == f"incident:{first['id']}" and history[0]["action"] == "incident_raise"
        records = [gw.gateway.recorder.log.get(i) for i in range(gw.gateway.recorder.log.size)]
        assert any(r.get("action") == "incident_opened" and r["incident"] == first["id"] for r in records)
        assert any(r.get("action") == "incident_snapshot" for r in records)


async def test_operators_acknowledge_note_and_resolve(make):
    async with make(policy=_policy()) as gw:
        r = await gw.client.post("/admin/incidents", json={"category": "bias", "severity": "high", "model": "demo",
                                                           "summary": "complaint from a regulator", "raise_to": 2},
                                 headers=auth("operator"))
        assert r.status_code == 201
        incident = r.json()
        assert await _level(gw) == 2
        base = f"/admin/incidents/{incident['id']}"
        assert (await gw.client.post(f"{base}/resolve", json={"note": ""}, headers=auth("operator"))).status_code == 400
        assert (await gw.client.post(f"{base}/ack", headers=auth("reviewer"))).status_code == 403
        assert (await gw.client.post(f"{base}/ack", json={"note": "on it"}, headers=auth("operator"))).json()["status"] == "acknowledged"
        assert (await gw.client.post(f"{base}/ack", headers=auth("operator"))).status_code == 409
        await gw.client.post(f"{base}/notes", json={"note": "segmenting decisions by group"}, headers=auth("operator2"))
        done = await gw.client.post(f"{base}/resolve", json={"note": "feature removed, retrained"}, headers=auth("operator"))
        assert done.json()["status"] == "resolved"
        timeline = [(e["type"], e.get("by")) for e in done.json()["timeline"]]
        assert timeline[0] == ("detected", "test-operator")
        assert ("acknowledged", "test-operator") in timeline and ("note", "test-operator2") in timeline
        assert timeline[-1] == ("resolved", "test-operator")
        assert await _level(gw) == 2  # nothing lowers a level by itself
        bad = await gw.client.post("/admin/incidents", json={"category": "weather", "severity": "high", "summary": "x"},
                                   headers=auth("operator"))
        assert bad.status_code == 400
