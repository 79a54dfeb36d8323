"""What the gateway records, and proving it: records through the API with their proofs."""

from __future__ import annotations

import asyncio
import base64
import hashlib


from gateway.evidence.log import EvidenceLog
from gateway.evidence.merkle import verify_consistency, verify_inclusion
from gateway.evidence.verify import verify_log
from tests.support import auth, eventually

SECRET_FIELD = "ssn-123-45-6789"


async def _set_level(gw, level: int):
    r = await gw.client.put("/admin/oversight/global", json={"level": level, "reason": "evidence test"}, headers=auth("operator"))
    assert r.status_code == 200


async def _predict(gw, **extra):
    body = {"applicant": {"id": "ev-1", "group": "A", "ssn": SECRET_FIELD}, **extra}
    return await gw.client.post("/models/demo/predict", json=body, headers={**auth("client"), "cookie": "session=abc"})


def _all_records(log: EvidenceLog) -> list[dict]:
    return [log.get(i) for i in range(log.size) if not _removed(log, i)]


def _removed(log: EvidenceLog, i: int) -> bool:
    try:
        log.read_leaf(i)
        return False
    except KeyError:
        return True


async def test_level_1_records_every_decision_with_a_verifiable_proof(make_gateway):
    async with make_gateway(policy={"defaults": {"sample_rate": {1: 0.0}}}) as gw:
        await _set_level(gw, 1)
        served = await _predict(gw)
        assert served.status_code == 200
        rid = served.headers["x-request-id"]
        r = await gw.client.get(f"/admin/evidence/{rid}", headers=auth("auditor"))
        assert r.status_code == 200
        data = r.json()
        (entry,) = data["records"]
        record = entry["record"]
        assert (record["kind"], record["request_id"], record["model"], record["version"]) == ("decision", rid, "demo", "v1")
        assert (record["level"], record["route"], record["status"], record["caller"]) == (1, "auto", 200, "test-client")
        assert record["policy"] == gw.gateway.policy.version
        headers = dict(record["request"]["headers"])
        assert headers["authorization"] == "[redacted]" and headers["cookie"] == "[redacted]"
        assert SECRET_FIELD in record["bodies"]["request"]["body"]  # no body redaction configured here
        assert record["bodies"]["response"]["body"] == served.text
        # the proof, checked independently of the log's own code path
        leaf = base64.b64decode(entry["leaf_b64"])
        root = bytes.fromhex(data["checkpoint"]["root_hash"])
        proof = [bytes.fromhex(h) for h in entry["inclusion_proof"]]
        leaf_hash = hashlib.sha256(b"\x00" + leaf).digest()  # RFC 9162 2.1.1, computed here
        assert verify_inclusion(leaf_hash, entry["index"], data["checkpoint"]["size"], proof, root)
        assert not verify_inclusion(hashlib.sha256(b"\x00" + leaf + b" ").digest(), entry["index"],
                                    data["checkpoint"]["size"], proof, root)


async def test_level_0_records_only_what_is_sampled_or_held(make_gateway):
    async with make_gateway(policy={"defaults": {"sample_rate": {0: 0.0}}}) as gw:
        served = await _predict(gw)
        r = await gw.client.get(f"/admin/evidence/{served.headers['x-request-id']}", headers=auth("auditor"))
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


async def test_a_held_request_is_on_disk_before_its_202(make_gateway):
    async with make_gateway() as gw:
        await _set_level(gw, 3)
        held = await _predict(gw)
        assert held.status_code == 202
        log = gw.gateway.recorder.log
        (idx,) = log.find(held.headers["x-request-id"])
        assert idx < log.durable_size  # fsynced, not only written
        record = log.get(idx)
        assert record["route"] == "held" and record["ticket"] == held.json()["ticket"]


async def test_control_actions_and_review_decisions_are_recorded_with_links(make_gateway):
    async with make_gateway() as gw:
        await _set_level(gw, 3)
        held = await _predict(gw)
        ticket = held.json()["ticket"]
        await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "reject", "note": "no"}, headers=auth("reviewer"))
        rid = held.headers["x-request-id"]
        records = (await gw.client.get(f"/admin/evidence/{rid}", headers=auth("auditor"))).json()["records"]
        kinds = [(r["record"]["kind"], r["record"].get("action")) for r in records]
        assert kinds == [("decision", None), ("action", "review_decision")]
        decision = records[1]["record"]
        assert (decision["actor"], decision["ticket"], decision["decision"]) == ("test-reviewer", ticket, {"action": "reject"})
        actions = [r for r in _all_records(gw.gateway.recorder.log) if r["kind"] == "action"]
        level_change = next(r for r in actions if r["action"] == "set_level")
        assert (level_change["actor"], level_change["reason"], level_change["level_to"]) == ("test-operator", "evidence test", 3)


async def test_body_fields_are_redacted_by_json_pointer(make_gateway):
    async with make_gateway(policy={"defaults": {"redact_body": ["/applicant/ssn"]}}) as gw:
        await _set_level(gw, 1)
        served = await _predict(gw)
        record = gw.gateway.recorder.log.get(gw.gateway.recorder.log.find(served.headers["x-request-id"])[0])
        request_body = record["bodies"]["request"].decode()
        assert SECRET_FIELD not in request_body and '"ssn":"[redacted]"' in request_body
        assert '"group":"A"' in request_body


async def test_bodies_are_encrypted_at_rest_and_readable_with_the_key(make_gateway, tmp_path):
    key = base64.b64encode(bytes(range(32))).decode()
    async with make_gateway(extra={"evidence": {"encryption_key": key, "key_id": "k1"}}) as gw:
        await _set_level(gw, 1)
        served = await _predict(gw)
        directory = gw.gateway.recorder.directory
        gw.gateway.recorder.log.sync_now()
        on_disk = b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())
        assert SECRET_FIELD.encode() not in on_disk
        assert served.content[:20] not in on_disk
        r = await gw.client.get(f"/admin/evidence/{served.headers['x-request-id']}", headers=auth("auditor"))
        assert SECRET_FIELD in r.json()["records"][0]["record"]["bodies"]["request"]["body"]


async def test_checkpoints_come_with_consistency_proofs(make_gateway):
    async with make_gateway(policy={"evidence": {"checkpoint_every": 2}}) as gw:
        await _set_level(gw, 1)
        for _ in range(4):
            await _predict(gw)
            await asyncio.sleep(0.12)  # past a group fsync, which writes the due checkpoint
        async def enough():
            data = (await gw.client.get("/admin/evidence/checkpoints", headers=auth("auditor"))).json()
            return data if len(data["checkpoints"]) >= 3 else None
        data = await eventually(enough)
        by_size = {c["size"]: bytes.fromhex(c["root_hash"]) for c in data["checkpoints"]}
        assert data["consistency"]
        for proof in data["consistency"]:
            assert verify_consistency(proof["from"], proof["to"], by_size[proof["from"]], by_size[proof["to"]],
                                      [bytes.fromhex(h) for h in proof["proof"]])
        assert (await gw.client.get("/admin/evidence/checkpoints", headers=auth("client"))).status_code == 403


async def test_legal_holds_are_set_and_released_by_operators(make_gateway):
    async with make_gateway() as gw:
        assert (await gw.client.post("/admin/evidence/holds", json={"reason": "x"}, headers=auth("auditor"))).status_code == 403
        assert (await gw.client.post("/admin/evidence/holds", json={"since": 10, "until": 5, "reason": "x"},
                                     headers=auth("operator"))).status_code == 400
        r = await gw.client.post("/admin/evidence/holds", json={"since": 0, "reason": "regulator request 42"}, headers=auth("operator"))
        assert r.status_code == 201
        hold = r.json()["hold"]
        holds = (await gw.client.get("/admin/evidence/holds", headers=auth("auditor"))).json()["holds"]
        assert holds[hold]["reason"] == "regulator request 42" and holds[hold]["actor"] == "test-operator"
        r = await gw.client.post(f"/admin/evidence/holds/{hold}/release", json={"reason": "closed"}, headers=auth("operator"))
        assert r.status_code == 200
        assert (await gw.client.get("/admin/evidence/holds", headers=auth("auditor"))).json()["holds"] == {}


async def test_the_log_a_gateway_leaves_behind_verifies(make_gateway):
    async with make_gateway() as gw:
        await _set_level(gw, 1)
        for _ in range(5):
            await _predict(gw)
        directory = gw.gateway.recorder.directory
    report = verify_log(directory)
    assert report.ok, report.summary()
