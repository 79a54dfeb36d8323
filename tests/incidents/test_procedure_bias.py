"""The seed's scenario "Model retrain introduced bias", played end to end against a real gateway.

A retrained version goes live and denies group B far more often; the disparate-impact
trigger opens an incident, which raises the model to level 3, pages the incident
commander (a real webhook receiver, PagerDuty Events v2 format), rolls back to the
previous version and verifies both versions against the known-good dataset. The
post-rollback watch runs (seconds here, an hour by default), a user reports and appeals a
decision, an operator assigns the command roles and queues the window's group-B denials
for retro-review, a reviewer works them, and the affected-individuals report and the
export bundle hold all of it.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile

import pytest

from gateway.demo.model import applicant_score
from gateway.evidence import verify_bundle
from tests.incidents.test_notifications import Receiver
from tests.support import auth, console_session, eventually, free_port, gateway_factory, start_demo

FAIRNESS = {"group_pointer": "/applicant/group", "outcome_pointer": "/decision", "favourable": "approve"}
RATE, SKEWED = 0.7, 0.1  # the demo's approval rate; the retrained version's rate for group B


def applicant_ids(prefix: str, count: int, low: float = 0.0, high: float = 1.0) -> list[str]:
    """Ids whose demo score lies in [low, high): their decisions are known in advance."""
    found, i = [], 0
    while len(found) < count:
        candidate = f"{prefix}-{i}"
        if low <= applicant_score({"id": candidate}) < high:
            found.append(candidate)
        i += 1
    return found


@pytest.fixture(scope="module")
def versions():
    good, retrained = start_demo("--name", "credit-v1"), start_demo("--name", "credit-v2")
    retrained.configure(skew={"B": SKEWED})
    yield good, retrained
    good.stop()
    retrained.stop()


@pytest.fixture
async def pager():
    receiver = Receiver(free_port())
    await receiver.start()
    yield receiver
    await receiver.stop()


def known_good(path) -> None:
    """Group-B applicants the previous version approves and the retrained one denies (score in [0.1, 0.7))."""
    lines = [json.dumps({"request": {"method": "POST", "path": "/predict",
                                     "json": {"applicant": {"id": i, "group": "B"}}},
                         "expect": {"status": 200, "contains": ["approve"]}})
             for i in applicant_ids("known-good", 10, SKEWED, RATE)]
    path.write_text("\n".join(lines) + "\n")


async def _send(gw, ids: list[str], group: str) -> list:
    out = []
    for applicant in ids:
        r = await gw.client.post("/models/credit/predict", json={"applicant": {"id": applicant, "group": group}},
                                 headers=auth("client"))
        assert r.status_code in (200, 202), r.text
        out.append(r)
    return out


async def _incident(gw, incident_id: str) -> dict:
    return (await gw.client.get(f"/admin/incidents/{incident_id}", headers=auth("operator"))).json()


def _event(incident: dict, kind: str) -> dict | None:
    return next((e for e in incident["timeline"] if e["type"] == kind), None)


async def test_model_retrain_introduced_bias(tmp_path, versions, pager, monkeypatch):
    good, retrained = versions
    monkeypatch.setenv("PD_ROUTING_KEY", "pd-routing-key-for-tests")
    dataset = tmp_path / "known-good.jsonl"
    known_good(dataset)
    policy = {
        "oversight": {"record_all_from_level": 0},  # every decision is evidence: the window can be audited whole
        "triggers": {"evaluate_every": "1h", "disparate_impact": {"rollback": True}},
        "incidents": {"post_rollback_watch": "3s", "replica_wait": "0.5s"},
        "models": {"credit": {"fairness": FAIRNESS, "subject_pointer": "/applicant/id", "feedback_window": "1h",
                              "verification": {"dataset": str(dataset), "min_pass_rate": 0.9}}},
    }
    hook = f"http://127.0.0.1:{pager.port}"
    extra = {"notifications": [
        {"name": "ic-pager", "url": f"{hook}/pagerduty", "format": "pagerduty", "role": "incident_commander",
         "routing_key": "${PD_ROUTING_KEY}"},
        {"name": "compliance", "url": f"{hook}/compliance", "format": "json", "role": "compliance"},
        {"name": "exec-critical", "url": f"{hook}/exec", "format": "slack", "severities": ["critical"]},
    ]}
    make = gateway_factory(tmp_path, {"credit": {"v1": good.url, "v2": retrained.url}})
    async with make(policy=policy, extra=extra) as gw:
        # the previous version serves: the baseline ----------------------------------------------------------
        await _send(gw, applicant_ids("base-a", 40), "A")
        await _send(gw, applicant_ids("base-b", 40), "B")

        # the retrain goes live (its release checks did not test group B) ------------------------------------
        r = await gw.client.post("/admin/models/credit/activate", json={"version": "v2", "reason": "retrain 2026.12"},
                                 headers=auth("operator"))
        assert r.status_code == 200, r.text
        await _send(gw, applicant_ids("live-a", 40), "A")
        denied_b = [i for i in applicant_ids("live-b", 40) if applicant_score({"id": i}) >= SKEWED]
        answers_b = await _send(gw, applicant_ids("live-b", 40), "B")
        assert sum(a.json()["decision"] == "approve" for a in answers_b) <= 10

        # a user reports discriminatory treatment and appeals ------------------------------------------------
        appealed = next(a.headers["x-request-id"] for a in answers_b if a.json()["decision"] == "deny")

        async def reported():
            r = await gw.client.post("/v1/reports", json={"request_id": appealed, "category": "discrimination",
                                                           "text": "denied although my income qualifies",
                                                           "appeal": True}, headers=auth("client"))
            return r if r.status_code == 201 else None
        report = (await eventually(reported, timeout=5)).json()

        # the disparate-impact trigger opens the incident -----------------------------------------------------
        opened = await gw.gateway.monitor.evaluate()
        [incident] = [i for i in opened if i["trigger"] == "disparate_impact"]
        iid = incident["id"]
        assert (incident["category"], incident["severity"], incident["version"]) == ("bias", "high", "v2")
        levels = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()
        assert levels["models"]["credit"]["level"] == 3
        actions = {a["action"]: a for a in incident["actions"]}
        assert actions["raise level"]["ok"] and actions["rollback"]["ok"] and actions["rollback"]["result"] == "v2 -> v1"
        versions_now = (await gw.client.get("/admin/models/credit/versions", headers=auth("operator"))).json()
        assert versions_now["active"] == "v1"
        rollback_entry = versions_now["history"][0]
        assert rollback_entry["action"] == "rollback" and rollback_entry["reverse"]["to"] == "v2"

        # the incident commander is paged (PagerDuty Events v2); critical-only targets are not ---------------
        page = (await eventually(lambda: _first(pager, "/pagerduty"), timeout=10))["body"]
        assert (page["routing_key"], page["event_action"], page["dedup_key"]) == ("pd-routing-key-for-tests", "trigger", iid)
        assert page["payload"]["severity"] == "error" and page["payload"]["component"] == "credit"
        await eventually(lambda: _first(pager, "/compliance"), timeout=10)
        stored = json.dumps(await gw.gateway.store.query("outbox", limit=100))
        assert "pd-routing-key-for-tests" not in stored  # the key is added when sending, never kept

        # verification: the known-good dataset on the live and the previous version, within a minute ----------
        async def verified():
            return _event(await _incident(gw, iid), "verification")
        check = await eventually(verified, timeout=60, interval=0.2)
        values = check["values"]
        assert (values["live"]["version"], values["live"]["rate"]) == ("v2", 0.0)
        assert (values["previous"]["version"], values["previous"]["rate"]) == ("v1", 1.0)
        assert values["difference"] == -1.0 and check["ok"] is False
        [replica] = values["replicas"]
        assert replica["replica"] == gw.gateway.state.replica_id and replica["window"]["decisions"] >= 160
        assert replica["window"]["groups"]["B"]["n"] >= 80

        # roles: the command structure, assigned ---------------------------------------------------------------
        for role, who in (("incident_commander", "alice"), ("technical_lead", "bob"), ("compliance", "carol")):
            r = await gw.client.post(f"/admin/incidents/{iid}/roles", json={"role": role, "who": who},
                                     headers=auth("operator"))
            assert r.status_code == 200, r.text
        bad = await gw.client.post(f"/admin/incidents/{iid}/roles", json={"role": "mascot", "who": "x"},
                                   headers=auth("operator"))
        assert bad.status_code == 400 and "incident_commander" in bad.json()["error"]["message"]
        async def carol_told():
            found = await _where(pager, "/compliance", "assigned") or []
            return [m for m in found if m["body"]["role"].get("who") == "carol"]
        [told] = await eventually(carol_told, timeout=10)
        assert (told["body"]["role"]["name"], told["body"]["role"]["by"]) == ("compliance", "test-operator")

        # the post-rollback watch: requests at level 3 meanwhile, then the comparison ---------------------------
        held = []
        for group in ("A", "B"):  # both groups approved at the same rate by the restored version: 7 of 10
            held += await _send(gw, applicant_ids(f"watch-{group}", 7, 0, RATE) + applicant_ids(f"watch-{group}x", 3, RATE), group)
        assert all(r.status_code == 202 and r.headers["x-model-version"] == "v1" for r in held)
        assert _event(await _incident(gw, iid), "watch_started") is not None

        async def watched():
            return _event(await _incident(gw, iid), "post_rollback_watch")
        watch = (await eventually(watched, timeout=20, interval=0.2))["values"]
        assert watch["version"] == "v1" and watch["period"]["decisions"] >= 20 and watch["baseline"]["decisions"] >= 80
        assert set(watch["changes"]) == {"error_rate", "latency_p50_ms", "accuracy", "disparate_impact"}
        assert not watch["changes"]["disparate_impact"]["worse"] and not watch["changes"]["error_rate"]["worse"]

        # retro-review of the window's group-B denials ----------------------------------------------------------
        r = await gw.client.post(f"/admin/incidents/{iid}/retro-reviews",
                                 json={"group": "B", "outcome": "deny", "reason": "route discriminatory cases to human review"},
                                 headers=auth("operator"))
        assert r.status_code == 201, r.text
        retro = r.json()
        assert retro["total"] >= len(denied_b) and retro["pending"] == retro["total"]
        page_html = await _console(gw)
        assert f"0/{retro['total']} reviewed" in page_html and "alice" in page_html and "carol" in page_html
        for ticket_id in retro["tickets"]:
            ticket = (await gw.client.get(f"/review/tickets/{ticket_id}", headers=auth("reviewer"))).json()
            verdict = "disagree" if ticket["version"] == "v2" else "agree"
            r = await gw.client.post(f"/review/tickets/{ticket_id}/decision", json={"verdict": verdict, "note": "retro"},
                                     headers=auth("reviewer"))
            assert r.status_code == 200, r.text
        progress = (await gw.client.get(f"/admin/incidents/{iid}/retro-reviews", headers=auth("auditor"))).json()
        [done] = progress["retro_reviews"]
        assert (done["status"], done["pending"], done["decided"]) == ("done", 0, retro["total"])
        assert done["verdicts"]["disagree"] == len(denied_b)
        assert f"{retro['total']}/{retro['total']} reviewed" in await _console(gw)

        # the appeal is worked: the decision is reversed --------------------------------------------------------
        r = await gw.client.post(f"/review/tickets/{report['appeal']['ticket']}/decision",
                                 json={"verdict": "disagree", "note": "income qualifies; reverse and offer the loan"},
                                 headers=auth("reviewer"))
        assert r.status_code == 200, r.text
        assert (await gw.client.get(f"/v1/reports/{report['id']}", headers=auth("client"))).json()["appeal"]["status"] == "reversed"

        # the affected-individuals report ------------------------------------------------------------------------
        affected = (await gw.client.get(f"/admin/incidents/{iid}/affected", headers=auth("auditor"))).json()
        assert affected["decisions"] >= 180 and affected["subject_pointer"] == "/applicant/id"
        assert affected["by_group_outcome"]["B"]["deny"] >= len(denied_b)
        assert set(denied_b) <= set(affected["subjects"])
        overturned = {row["subject"] for row in affected["individuals"] if row["overturned"]}
        assert overturned == set(denied_b)  # every retrained-version denial of group B, and nothing else
        row = next(r for r in affected["individuals"] if r["request_id"] == appealed)
        assert (row["reported"], row["appealed"], row["version"], row["group"]) == ("discrimination", True, "v2", "B")
        assert (affected["reported"], affected["appealed"]) == (1, 1)
        r = await gw.client.get(f"/admin/incidents/{iid}/affected", params={"format": "csv"}, headers=auth("auditor"))
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == affected["decisions"] and {r["subject"] for r in rows if r["overturned"] == "True"} == set(denied_b)

        # the export bundle holds all of it ------------------------------------------------------------------------
        r = await gw.client.get("/admin/evidence/export", params={"incident": iid}, headers=auth("auditor"))
        assert r.status_code == 200, r.text
        bundle = tmp_path / "incident.tar.gz"
        bundle.write_bytes(r.content)
    assert verify_bundle(bundle).ok
    with tarfile.open(bundle, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    in_bundle = json.loads(files["affected.json"])
    assert {r["subject"] for r in in_bundle["individuals"] if r["overturned"]} == set(denied_b)
    assert files["affected.csv"].startswith(b"request_id,")
    assert json.loads(files["retro-reviews.json"])[0]["status"] == "done"
    timeline = {e["type"] for e in json.loads(files["incident.json"])["timeline"]}
    assert timeline >= {"detected", "action", "verification", "assigned", "watch_started", "post_rollback_watch",
                        "retro_review_queued", "retro_review_done"}
    assert json.loads(files["incident.json"])["roles"]["incident_commander"]["who"] == "alice"
    records = [json.loads(line)["record"] for line in files["records.jsonl"].splitlines()]
    kinds = {r.get("action") for r in records if r["kind"] == "action"}
    assert {"incident_opened", "rollback", "incident_verification", "incident_post_rollback_watch", "user_report"} <= kinds
    assert b"pd-routing-key-for-tests" not in b"".join(files.values())
    assert _where_sync(pager, "/exec") == []  # a critical-only target heard nothing of a high incident


async def _console(gw) -> str:
    session = await console_session(gw.client, "operator")
    r = await gw.client.get("/console", headers={**session, "accept": "text/html"})
    assert r.status_code == 200
    return r.text


async def _first(receiver, path: str):
    return next((m for m in receiver.received if m["path"] == path), None)


async def _where(receiver, path: str, event: str):
    found = [m for m in receiver.received if m["path"] == path and m["body"].get("event") == event]
    return found or None


def _where_sync(receiver, path: str) -> list:
    return [m for m in receiver.received if m["path"] == path]
