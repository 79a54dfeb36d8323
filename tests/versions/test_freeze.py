"""No new deployments while paused; every switch names how long it took and its exact reverse."""

from __future__ import annotations

import pytest

from tests.support import auth, gateway_factory, start_demo


@pytest.fixture(scope="module")
def demos():
    models = {name: start_demo("--name", name) for name in ("demo-v1", "demo-v2", "demo-v3")}
    yield models
    for model in models.values():
        model.stop()


@pytest.fixture
def make(tmp_path, demos):
    return gateway_factory(tmp_path, {"credit": {v: demos[f"demo-{v}"].url for v in ("v1", "v2", "v3")},
                                      "other": {"v1": demos["demo-v1"].url, "v2": demos["demo-v2"].url}})


async def _activate(gw, version: str, model: str = "credit"):
    return await gw.client.post(f"/admin/models/{model}/activate", json={"version": version, "reason": "release"},
                                headers=auth("operator"))


async def test_a_switch_names_its_duration_and_its_exact_reverse(make):
    async with make() as gw:
        r = await _activate(gw, "v2")
        assert r.status_code == 200, r.text
        answer = r.json()
        assert 0 < answer["seconds"] < 10
        reverse = answer["reverse"]
        assert (reverse["from"], reverse["to"], reverse["http"]) == ("v2", "v1", "POST /admin/models/credit/rollback")
        assert reverse["cli"].startswith("gateway rollback credit --to v1 --reason")
        undone = await gw.client.post("/admin/models/credit/rollback", json=reverse["body"], headers=auth("operator"))
        assert undone.status_code == 200 and undone.json()["to"] == "v1"  # the reverse, as named, works
        history = (await gw.client.get("/admin/models/credit/versions", headers=auth("operator"))).json()["history"]
        assert history[0]["reverse"]["to"] == "v2" and history[1]["reverse"]["to"] == "v1"


@pytest.mark.parametrize("pause", ["model", "global"])
async def test_at_level_4_only_a_rollback_switches(make, pause):
    async with make() as gw:
        assert (await _activate(gw, "v2")).status_code == 200
        body = {"reason": "incident drill", **({"model": "credit"} if pause == "model" else {})}
        assert (await gw.client.post("/admin/kill", json=body, headers=auth("operator"))).status_code == 200
        refused = await _activate(gw, "v3")
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["type"] == "deployments_paused" and "paused (level 4)" in error["message"]
        assert "rollback is allowed" in error["message"]
        active = (await gw.client.get("/admin/models/credit/versions", headers=auth("operator"))).json()["active"]
        assert active == "v2"  # nothing changed
        rolled = await gw.client.post("/admin/models/credit/rollback", json={"reason": "back"}, headers=auth("operator"))
        assert rolled.status_code == 200 and rolled.json()["to"] == "v1"
        to_named = await gw.client.post("/admin/models/credit/rollback", json={"to": "v2", "reason": "named"},
                                        headers=auth("operator"))
        assert to_named.status_code == 200  # a rollback to a named version is a rollback too


async def test_a_critical_incident_for_the_model_freezes_it_until_resolved(make):
    async with make() as gw:
        r = await gw.client.post("/admin/incidents", json={"category": "security", "severity": "critical", "model": "credit",
                                                           "summary": "weights changed on disk", "raise_to": 2},
                                 headers=auth("operator"))
        incident = r.json()["id"]
        refused = await _activate(gw, "v2")
        assert refused.status_code == 409 and incident in refused.json()["error"]["message"]
        assert (await _activate(gw, "v2", model="other")).status_code == 200  # other models deploy as before
        await gw.client.post(f"/admin/incidents/{incident}/resolve", json={"note": "false alarm: a backup job"},
                             headers=auth("operator"))
        assert (await _activate(gw, "v2")).status_code == 200


async def test_a_high_incident_does_not_freeze_deployments(make):
    async with make() as gw:
        await gw.client.post("/admin/incidents", json={"category": "bias", "severity": "high", "model": "credit",
                                                       "summary": "rates diverged", "raise_to": 3}, headers=auth("operator"))
        assert (await _activate(gw, "v2")).status_code == 200
