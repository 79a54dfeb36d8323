"""Verification: an incident is confirmed by the known-good dataset on the live and the previous version,
with every replica's figures for the window attached."""

from __future__ import annotations

import json

import pytest

from tests.support import auth, eventually, gateway_factory, start_demo


@pytest.fixture(scope="module")
def demos():
    good, bad = start_demo("--name", "demo-v1"), start_demo("--name", "demo-v2")
    bad.configure(fail_rate=1.0, fail_status=503)
    yield good, bad
    good.stop()
    bad.stop()


def _dataset(path):
    path.write_text("\n".join(json.dumps({"request": {"method": "POST", "path": "/predict",
                                                      "json": {"applicant": {"id": f"k-{i}"}}},
                                          "expect": {"status": 200}}) for i in range(8)) + "\n")
    return path


async def _verification(gw, incident: str):
    doc = (await gw.client.get(f"/admin/incidents/{incident}", headers=auth("operator"))).json()
    return [e for e in doc["timeline"] if e["type"] == "verification"]


async def test_both_versions_are_tested_and_every_replica_reports(tmp_path, demos, redis_url):
    good, bad = demos
    policy = {"incidents": {"replica_wait": "1s"},
              "models": {"credit": {"verification": {"dataset": str(_dataset(tmp_path / "known.jsonl"))}}}}
    make = gateway_factory(tmp_path, {"credit": {"v1": good.url, "v2": bad.url}})
    async with make(policy=policy, store=redis_url) as one, make(policy=policy, store=redis_url) as two:
        for gw in (one, two):
            await gw.client.post("/models/credit/predict", json={"applicant": {"id": "x"}}, headers=auth("client"))
        assert (await one.client.post("/admin/models/credit/activate", json={"version": "v2", "reason": "release"},
                                      headers=auth("operator"))).status_code == 200
        r = await two.client.post("/admin/incidents", json={"category": "availability", "severity": "high",
                                                            "model": "credit", "summary": "answers fail"},
                                  headers=auth("operator"))
        incident = r.json()["id"]
        [event] = await eventually(lambda: _verification(one, incident), timeout=30, interval=0.1)
        values = event["values"]
        assert (values["live"]["version"], values["live"]["passed"], values["live"]["total"]) == ("v2", 0, 8)
        assert (values["previous"]["version"], values["previous"]["rate"], values["difference"]) == ("v1", 1.0, -1.0)
        assert event["ok"] is False and "live v2: 0/8 passed" in event["text"] and "previous v1: 8/8" in event["text"]
        assert sorted(f["replica"] for f in values["replicas"]) == sorted({one.gateway.state.replica_id,
                                                                           two.gateway.state.replica_id})

        again = await one.client.post(f"/admin/incidents/{incident}/verify", headers=auth("operator"))
        assert again.status_code == 200 and again.json()["live"]["rate"] == 0.0  # on demand, too
        assert len(await _verification(one, incident)) == 2
        assert (await one.client.post(f"/admin/incidents/{incident}/verify", headers=auth("auditor"))).status_code == 403


async def test_without_a_dataset_the_timeline_says_so(tmp_path, demos):
    good, _ = demos
    async with gateway_factory(tmp_path, {"credit": {"v1": good.url}})(policy={"incidents": {"replica_wait": "0.1s"}}) as gw:
        r = await gw.client.post("/admin/incidents", json={"category": "bias", "severity": "high", "model": "credit",
                                                           "summary": "complaints"}, headers=auth("operator"))
        [event] = await eventually(lambda: _verification(gw, r.json()["id"]), timeout=10, interval=0.1)
        assert "no independent test" in event["text"] and "models.credit.verification" in event["text"]
        assert len(event["values"]["replicas"]) == 1
