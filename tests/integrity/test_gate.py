"""The serving gate: a signed version answers only while its files match their signature."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import VECTORS, auth, eventually, gateway_factory

ROOT_DIGEST = "2f1e2865c896ea8593ffe0881cbff98e5484484aae0b9163c4beebb3546c120a"


@pytest.fixture
def signed_model(tmp_path) -> Path:
    model = tmp_path / "weights"
    shutil.copytree(VECTORS / "model", model)
    for path in model.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def _signed_version(demo_url: str, model: Path, key: Path | None = None) -> dict:
    return {"upstream": demo_url, "artifact": str(model), "signature": str(VECTORS / "sigs" / "p256-files-sha256.sig"),
            "trust": {"public_key": str(key or VECTORS / "keys" / "p256.pub.pem")}}


async def _status(gw, model: str, version: str = "v1") -> dict:
    return (await gw.client.get("/admin/models", headers=auth("operator"))).json()["models"][model]["versions"][version]


async def _predict(gw, model: str):
    return await gw.client.post(f"/models/{model}/predict", json={"applicant": {"id": "g-1"}}, headers=auth("client"))


async def test_a_verified_version_serves_and_a_tampered_one_does_not(tmp_path, demo, signed_model):
    make = gateway_factory(tmp_path, {"signed": {"v1": _signed_version(demo.url, signed_model)}, "plain": {"v1": demo.url}})
    async with make() as gw:
        status = await eventually(lambda: _verified(gw, "signed"), timeout=10)
        assert status["root_digest"] == ROOT_DIGEST and status["signer"]
        assert (await _predict(gw, "signed")).status_code == 200

        weights = signed_model / "weights.bin"
        data = bytearray(weights.read_bytes())
        data[1000] ^= 0x01
        weights.write_bytes(bytes(data))
        r = await gw.client.post("/admin/models/signed/versions/v1/verify", headers=auth("operator"))
        assert r.status_code == 200 and r.json()["status"] == "failed"
        assert {"path": "weights.bin", "kind": "changed"} in r.json()["differences"]

        refused = await _predict(gw, "signed")
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["type"] == "model_integrity" and "failed verification" in error["message"]
        assert (await _predict(gw, "plain")).status_code == 200  # other models keep serving
        assert (await _status(gw, "plain"))["status"] == "unsigned"

        incidents = (await gw.client.get("/admin/incidents", headers=auth("operator"))).json()["incidents"]
        (incident,) = [i for i in incidents if i["trigger"] == "integrity"]
        assert (incident["category"], incident["severity"], incident["model"]) == ("security", "critical", "signed")
        levels = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()
        assert levels["models"]["signed"]["level"] == 4  # the policy's integrity trigger pauses the model
        assert levels["models"]["plain"]["level"] == 0

        data[1000] ^= 0x01  # the files are fixed: a fresh verification restores the version...
        weights.write_bytes(bytes(data))
        r = await gw.client.post("/admin/models/signed/versions/v1/verify", headers=auth("operator"))
        assert r.json()["status"] == "verified"
        held = await _predict(gw, "signed")
        assert held.status_code == 202 and held.headers["x-oversight-route"] == "human"  # ...but the pause stays
        lower = await gw.client.put("/admin/oversight/models/signed", json={"level": 0, "reason": "files restored"},
                                    headers=auth("operator"))
        await gw.client.post(f"/admin/oversight/changes/{lower.json()['change']['id']}/approve", headers=auth("operator2"))
        assert (await _predict(gw, "signed")).status_code == 200  # two operators lowered it


async def test_scheduled_reverification_catches_a_change(tmp_path, demo, signed_model):
    make = gateway_factory(tmp_path, {"signed": {"v1": _signed_version(demo.url, signed_model)}})
    async with make(policy={"integrity": {"reverify_interval": "200ms"}}) as gw:
        await eventually(lambda: _verified(gw, "signed"), timeout=10)
        (signed_model / "extra.txt").write_text("not signed")
        async def refused():
            return (await _predict(gw, "signed")).status_code == 503
        await eventually(refused, timeout=10)
        status = await _status(gw, "signed")
        assert status["status"] == "failed" and "extra: extra.txt" in status["problems"]


async def test_the_wrong_key_never_verifies(tmp_path, demo, signed_model):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.pub.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    make = gateway_factory(tmp_path, {"signed": {"v1": _signed_version(demo.url, signed_model, other)}})
    async with make() as gw:
        async def failed():
            s = await _status(gw, "signed")
            return s if s["status"] == "failed" else None
        await eventually(failed, timeout=10)
        assert (await _predict(gw, "signed")).json()["error"]["type"] == "model_integrity"
    assert demo.stats()["requests"] == 0


async def test_a_policy_can_refuse_unsigned_versions(tmp_path, demo):
    make = gateway_factory(tmp_path, {"plain": {"v1": demo.url}})
    async with make(policy={"integrity": {"serve_unsigned": False}}) as gw:
        r = await _predict(gw, "plain")
        assert r.status_code == 503 and "no signature" in r.json()["error"]["message"]


async def test_only_operators_verify_and_unknown_versions_are_404(tmp_path, demo):
    make = gateway_factory(tmp_path, {"plain": {"v1": demo.url}})
    async with make() as gw:
        assert (await gw.client.post("/admin/models/plain/versions/v1/verify", headers=auth("reviewer"))).status_code == 403
        assert (await gw.client.post("/admin/models/plain/versions/v9/verify", headers=auth("operator"))).status_code == 404
        assert (await gw.client.get("/admin/models", headers=auth("auditor"))).status_code == 200


async def _verified(gw, model: str):
    status = await _status(gw, model)
    return status if status["status"] == "verified" else None
