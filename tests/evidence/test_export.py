"""`gateway evidence export` from a running gateway, and the bundle checked on its own."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time

import pytest

from gateway.cli import main
from gateway.evidence.bundle import verify_bundle
from tests.support import TOKENS, auth, gateway_factory


@pytest.fixture
def make_gateway(tmp_path, demo):
    secret_header = {"upstream": demo.url, "headers": {"x-api-key": "sk-upstream-secret"}}
    return gateway_factory(tmp_path, {"demo": {"v1": secret_header, "v2": demo.url}, "other": {"v1": demo.url}})


async def test_an_exported_bundle_verifies_alone_and_fails_when_changed(make_gateway, tmp_path, monkeypatch, capsys):
    async with make_gateway() as gw:
        since = time.time() - 1
        await gw.client.put("/admin/oversight/global", json={"level": 1, "reason": "watch"}, headers=auth("operator"))
        rids = []
        for i in range(5):
            r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": f"x{i}"}}, headers=auth("client"))
            rids.append(r.headers["x-request-id"])
        await gw.client.post("/models/other/predict", json={"applicant": {"id": "o"}}, headers=auth("client"))
        await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "review"}, headers=auth("operator"))
        held = await gw.client.post("/models/demo/predict", json={"applicant": {"id": "h"}}, headers=auth("client"))
        await gw.client.post(f"/review/tickets/{held.json()['ticket']}/decision", json={"action": "reject", "note": "n"},
                             headers=auth("reviewer"))
        until = time.time() + 1
        out = tmp_path / "bundle.tar.gz"
        monkeypatch.setenv("GATEWAY_TOKEN", TOKENS["auditor"])
        code = await asyncio.to_thread(main, ["evidence", "export", "--since", str(since), "--until", str(until),
                                              "--model", "demo", "-o", str(out), "--url", gw.url])
        assert code == 0, capsys.readouterr().err
        assert "verify-bundle" in capsys.readouterr().out
        refused = await asyncio.to_thread(main, ["evidence", "export", "--since", str(since), "-o", str(tmp_path / "x"),
                                                 "--url", gw.url])
        assert refused == 2 and "--since needs --until" in capsys.readouterr().err
        monkeypatch.setenv("GATEWAY_TOKEN", TOKENS["client"])
        assert await asyncio.to_thread(main, ["evidence", "export", "--incident", "inc_nope", "-o", str(tmp_path / "y"),
                                              "--url", gw.url]) == 4  # not authorised
        assert "403 forbidden" in capsys.readouterr().err
        signing_pub = gw.gateway.config.data_dir / "evidence-signing.pub"

    report = verify_bundle(out)
    assert report.ok, report.summary()
    files = _members(out)
    records = [json.loads(line)["record"] for line in files["records.jsonl"].splitlines()]
    decisions = [r for r in records if r["kind"] == "decision"]
    assert {r["request_id"] for r in decisions} >= set(rids)
    assert all(r["model"] == "demo" for r in records)
    assert any(r.get("action") == "review_decision" for r in records)
    history = json.loads(files["history.json"])
    assert any(h["key"] == "level/model/demo" and h["reason"] == "review" for h in history)
    tickets = json.loads(files["review-decisions.json"])
    (held_ticket,) = [t for t in tickets if t["kind"] == "hold"]
    assert held_ticket["decision"]["action"] == "reject"
    assert "models/demo/v1/verification.json" in files and "sampling.json" in files
    config = files["config.yaml"].decode()
    assert "sha256" not in config and "test-client" in config
    for secret in (*TOKENS.values(), "sk-upstream-secret"):
        assert secret.encode() not in b"".join(files.values())

    from gateway.cli import main as cli

    assert cli(["evidence", "verify-bundle", str(out), "--key", str(signing_pub)]) == 0
    tampered = tmp_path / "tampered.tar.gz"
    files["history.json"] = files["history.json"].replace(b'"review"', b'"routine"')
    with tarfile.open(tampered, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert not verify_bundle(tampered).ok
    assert cli(["evidence", "verify-bundle", str(tampered)]) == 1


async def test_bad_export_requests_are_clear(make_gateway):
    async with make_gateway() as gw:
        for params, status in [({"since": "yesterday", "until": "1"}, 400), ({"since": "10"}, 400),
                               ({"since": "10", "until": "5"}, 400), ({"incident": "inc_nope"}, 404),
                               ({"since": "1", "until": "2", "model": "nope"}, 404)]:
            r = await gw.client.get("/admin/evidence/export", params=params, headers=auth("auditor"))
            assert r.status_code == status, (params, r.text)
            assert r.json()["error"]["message"]
        assert (await gw.client.get("/admin/evidence/export", params={"since": "1", "until": "2"}, headers=auth("reviewer"))).status_code == 403


def _members(path):
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
