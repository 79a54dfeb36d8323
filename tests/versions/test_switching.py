"""Switching versions: checks first, nothing changed by a failure, one compare-and-set, recorded."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from tests.support import VECTORS, auth, free_port, gateway_factory, start_demo


@pytest.fixture(scope="module")
def demos():
    models = {name: start_demo("--name", name) for name in ("demo-v1", "demo-v2", "demo-v3")}
    yield models
    for model in models.values():
        model.stop()


@pytest.fixture
def signed_copy(tmp_path):
    model = tmp_path / "weights-v3"
    shutil.copytree(VECTORS / "model", model)
    for path in model.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.fixture
def make(tmp_path, demos, signed_copy):
    v3 = {"upstream": demos["demo-v3"].url, "artifact": str(signed_copy),
          "signature": str(VECTORS / "sigs" / "p256-files-sha256.sig"), "trust": {"public_key": str(VECTORS / "keys" / "p256.pub.pem")}}
    return gateway_factory(tmp_path, {"credit": {"v1": demos["demo-v1"].url, "v2": demos["demo-v2"].url, "v3": v3,
                                                 "v4": f"http://127.0.0.1:{free_port()}"}})


async def _serving(gw) -> str:
    r = await gw.client.post("/models/credit/predict", json={"applicant": {"id": "s"}}, headers=auth("client"))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == f"demo-{r.headers['x-model-version']}"  # the header names the version that answered
    return r.headers["x-model-version"]


async def _activate(gw, version: str, reason: str = "release", who: str = "operator"):
    return await gw.client.post("/admin/models/credit/activate", json={"version": version, "reason": reason}, headers=auth(who))


async def _state(gw) -> dict:
    return (await gw.client.get("/admin/models/credit/versions", headers=auth("operator"))).json()


@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_switch_and_roll_back_over_the_whole_history(make, store, request):
    url = request.getfixturevalue("redis_url") if store == "redis" else "embedded"
    async with make(store=url) as gw:
        assert await _serving(gw) == "v1"
        r = await _activate(gw, "v2")
        assert r.status_code == 200, r.text
        result = r.json()
        assert (result["from"], result["to"], result["action"]) == ("v1", "v2", "activate")
        assert [c["check"] for c in result["checks"]] == ["exists", "verifies", "upstream"]
        assert result["applied_by"] == result["replicas"] == 1
        assert await _serving(gw) == "v2"
        assert (await _activate(gw, "v3")).status_code == 200
        assert await _serving(gw) == "v3"
        r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "v3 misbehaves"}, headers=auth("operator"))
        assert r.status_code == 200 and (r.json()["from"], r.json()["to"]) == ("v3", "v2")
        r = await gw.client.post("/admin/models/credit/rollback", json={"to": "v1", "reason": "all the way"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["to"] == "v1"
        assert await _serving(gw) == "v1"
        state = await _state(gw)
        assert state["active"] == "v1" and state["versions"]["v1"]["active"]
        moves = [(h["action"], h.get("from"), h.get("to")) for h in state["history"]]
        assert moves[:4] == [("rollback", "v2", "v1"), ("rollback", "v3", "v2"), ("activate", "v2", "v3"), ("activate", "v1", "v2")]
        assert state["history"][0]["actor"] == "test-operator" and state["history"][0]["reason"] == "all the way"


async def test_a_rollback_skips_versions_that_no_longer_verify(make, signed_copy):
    async with make() as gw:
        await _activate(gw, "v3")
        await _activate(gw, "v2")
        (signed_copy / "weights.bin").write_bytes(b"tampered")
        r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "back"}, headers=auth("operator"))
        assert r.status_code == 200, r.text
        assert r.json()["to"] == "v1"  # v3 was more recent, but its files changed
        assert r.json()["skipped"][0]["version"] == "v3"


async def test_each_failed_check_changes_nothing(make, signed_copy):
    async with make() as gw:
        before = await _state(gw)
        r = await _activate(gw, "v9")
        assert r.status_code == 404
        r = await _activate(gw, "v4")  # nothing listens there
        assert r.status_code == 409 and r.json()["error"]["type"] == "check_failed"
        assert "check `upstream` failed" in r.json()["error"]["message"]
        (signed_copy / "config.json").write_text("{}")
        r = await _activate(gw, "v3")
        assert r.status_code == 409 and "check `verifies` failed" in r.json()["error"]["message"]
        checks = r.json()["error"]["checks"]
        assert [(c["check"], c["ok"]) for c in checks] == [("exists", True), ("verifies", False)]
        r = await gw.client.post("/admin/models/credit/activate", json={"version": "v2"}, headers=auth("operator"))
        assert r.status_code == 400
        after = await _state(gw)
        assert after["active"] == "v1" and after["history"] == before["history"]
        assert await _serving(gw) == "v1"
        records = [gw.gateway.recorder.log.get(i) for i in range(gw.gateway.recorder.log.size)]
        assert not [x for x in records if x.get("action") in ("activate", "rollback", "snapshot_before_switch")]


async def test_rollback_with_no_earlier_version_is_409(make):
    async with make() as gw:
        r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "nothing to go back to"}, headers=auth("operator"))
        assert r.status_code == 409 and "no earlier version" in r.json()["error"]["message"]


async def test_of_two_concurrent_switches_exactly_one_wins(make):
    async with make() as gw:
        results = await asyncio.gather(_activate(gw, "v2", "a"), _activate(gw, "v3", "b"))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 409]
        loser = next(r for r in results if r.status_code == 409)
        winner = next(r for r in results if r.status_code == 200)
        assert loser.json()["error"]["active"] == winner.json()["to"]
        assert await _serving(gw) == winner.json()["to"]


async def test_a_smoke_dataset_must_pass(make, tmp_path, demos):
    dataset = tmp_path / "smoke.jsonl"
    lines = [{"request": {"method": "POST", "path": "/predict", "json": {"applicant": {"id": f"k{i}"}}},
              "expect": {"status": 200, "contains": "decision"}} for i in range(9)]
    lines.append({"request": {"method": "POST", "path": "/predict", "json": {"applicant": {"id": "k9"}}},
                  "expect": {"contains": "demo-v1"}})  # only v1 names itself so
    dataset.write_text("\n".join(json.dumps(line) for line in lines))
    async with make(policy={"models": {"credit": {"smoke": {"dataset": str(dataset), "min_pass_rate": 0.95}}}}) as gw:
        r = await _activate(gw, "v2")
        assert r.status_code == 409 and "check `smoke` failed" in r.json()["error"]["message"]
        smoke = r.json()["error"]["checks"][-1]
        assert (smoke["passed"], smoke["total"]) == (9, 10) and "lacks 'demo-v1'" in smoke["failures"][0]
        assert await _serving(gw) == "v1"
    async with make(policy={"models": {"credit": {"smoke": {"dataset": str(dataset), "min_pass_rate": 0.9}}}}) as gw:
        r = await _activate(gw, "v2")
        assert r.status_code == 200 and r.json()["checks"][-1]["rate"] == 0.9


async def test_the_state_being_left_is_recorded_before_the_switch(make):
    async with make() as gw:
        ids = [(await gw.client.post("/models/credit/predict", json={"applicant": {"id": str(i)}},
                                     headers=auth("client"))).headers["x-request-id"] for i in range(3)]
        await _activate(gw, "v2", reason="new release")
        log = gw.gateway.recorder.log
        records = [log.get(i) for i in range(log.size)]
        snapshot = next(r for r in records if r.get("action") == "snapshot_before_switch")
        switched = next(r for r in records if r.get("action") == "activate")
        assert records.index(snapshot) < records.index(switched)
        state = snapshot["snapshot"]
        assert state["version"] == "v1" and state["recent_requests"][-3:] == ids
        assert state["traffic"]["answers_by_status"]["200"] == 3
        assert state["levels"]["effective"] == 0 and state["policy"]["version"] == gw.gateway.policy.version
        assert (switched["version_from"], switched["version_to"], switched["reason"]) == ("v1", "v2", "new release")


async def test_versions_added_at_run_time_are_never_active_by_being_added(make, demos, monkeypatch):
    monkeypatch.setenv("CREDIT_V5_KEY", "sk-v5")
    async with make(model_settings={"credit": {"versions_api": {"allowed_env": ["CREDIT_V5_KEY"]}}}) as gw:
        spec = {"upstream": demos["demo-v2"].url, "headers": {"x-api-key": "${CREDIT_V5_KEY}"}}
        r = await gw.client.post("/admin/models/credit/versions", json={"version": "v5", "reason": "candidate", "spec": spec},
                                 headers=auth("operator"))
        assert r.status_code == 201, r.text
        assert r.json()["active"] is False
        assert await _serving(gw) == "v1"
        again = await gw.client.post("/admin/models/credit/versions", json={"version": "v5", "reason": "x", "spec": spec},
                                     headers=auth("operator"))
        assert again.status_code == 409
        literal = {"upstream": demos["demo-v2"].url, "headers": {"x-api-key": "sk-plain"}}
        r = await gw.client.post("/admin/models/credit/versions", json={"version": "v6", "reason": "x", "spec": literal},
                                 headers=auth("operator"))
        assert r.status_code == 400 and "ENV_VAR" in r.json()["error"]["message"]
        bad = await gw.client.post("/admin/models/credit/versions", json={"version": "v7", "reason": "x", "spec": {"upstream": "ftp://x"}},
                                   headers=auth("operator"))
        assert bad.status_code == 400
        assert (await _activate(gw, "v5")).status_code == 200
        r = await gw.client.post("/models/credit/predict", json={"applicant": {"id": "s"}}, headers=auth("client"))
        assert r.headers["x-model-version"] == "v5" and r.json()["model"] == "demo-v2"
        assert "sk-v5" not in json.dumps(await _state(gw))
        assert (await gw.client.post("/admin/models/credit/activate", json={"version": "v2", "reason": "x"},
                                     headers=auth("reviewer"))).status_code == 403


def test_a_switch_answers_once_every_replica_serves_the_new_version(tmp_path, redis_url, demos):
    import httpx

    from tests.support import GatewayProcess, write_config

    config = write_config(tmp_path, {"credit": {"v1": demos["demo-v1"].url, "v2": demos["demo-v2"].url}}, store=redis_url)
    a, b = GatewayProcess(config, free_port()).start(), GatewayProcess(config, free_port()).start()
    try:
        for target in ("v2", "v1", "v2"):
            r = httpx.post(f"{a.url}/admin/models/credit/activate", json={"version": target, "reason": "ship"},
                           headers=auth("operator"), timeout=30)
            assert r.status_code == 200 and r.json()["applied_by"] == r.json()["replicas"] == 2, r.text
            served = httpx.post(f"{b.url}/models/credit/predict", json={"applicant": {"id": "x"}}, headers=auth("client"))
            assert served.headers["x-model-version"] == target  # the other replica, at once
    finally:
        a.stop()
        b.stop()


async def test_of_two_concurrent_plain_rollbacks_exactly_one_wins(make):
    for _ in range(5):  # the race was lost 1 to 5 times in 10
        async with make() as gw:
            await _activate(gw, "v2")
            await _activate(gw, "v3")
            rollback = lambda why: gw.client.post("/admin/models/credit/rollback", json={"reason": why},  # noqa: E731
                                                  headers=auth("operator"))
            results = await asyncio.gather(rollback("a"), rollback("b"))
            assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
            history = (await _state(gw))["history"]
            assert [h["action"] for h in history[:2]] == ["rollback", "activate"]  # one rollback recorded


async def test_a_plain_rollback_racing_an_activation_never_overwrites_it_silently(make):
    async with make() as gw:
        await _activate(gw, "v2")
        rollback = gw.client.post("/admin/models/credit/rollback", json={"reason": "back"}, headers=auth("operator"))
        results = await asyncio.gather(rollback, _activate(gw, "v3"))
        assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()["to"]
        assert (await _state(gw))["active"] == winner == await _serving(gw)


async def test_a_plain_rollback_goes_back_never_forward_again(make):
    async with make() as gw:
        await _activate(gw, "v2")
        await _activate(gw, "v3")
        moves = []
        for _ in range(2):
            r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "back"}, headers=auth("operator"))
            assert r.status_code == 200, r.text
            moves.append((r.json()["from"], r.json()["to"]))
        assert moves == [("v3", "v2"), ("v2", "v1")]  # not v2 -> v3 again
        r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "back"}, headers=auth("operator"))
        assert r.status_code == 409  # nothing earlier is left
        assert (await _activate(gw, "v3")).status_code == 200  # activated on purpose, v3 is a rollback target again
        r = await gw.client.post("/admin/models/credit/rollback", json={"reason": "back"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["to"] == "v1"
