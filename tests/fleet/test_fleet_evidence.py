"""The fleet answers for its evidence as one: three replicas behind nginx, one shared evidence directory.

Every request goes through nginx to whichever replica it picks, at level 1 (every decision
recorded). Afterwards every replica must produce every request's records with a proof
that checks against that log's signed checkpoint, one export must hold every record and
verify on its own (and with a witness's cosignature required), and the same must hold
once a replica's machine is lost: killed, its data directory deleted. Then a log is
rewritten and re-signed with its own replica's key: the other replicas' witnesses and
`verify-bundle --require-cosignatures 1` both detect it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.evidence import LogReader, load_signing_key, verify_bundle
from gateway.evidence.checkpoints import parse_note
from gateway.evidence.merkle import leaf_hash, verify_inclusion
from scripts.fleet import Fleet
from tests.evidence.helpers import rewrite_log

REQUESTS = 3000


def send_all(fleet: Fleet, n: int, threads: int = 12) -> list[str]:
    """n predictions through nginx; returns the request ids, each answered 200."""
    local = threading.local()

    def one(i: int) -> str:
        client = getattr(local, "client", None) or setattr(local, "client", httpx.Client(timeout=30)) or local.client
        rid = f"fleet-{i:05d}"
        r = client.post(f"{fleet.url}/models/demo/predict", json={"applicant": {"id": f"a-{i}"}},
                        headers={**fleet.auth("client"), "x-request-id": rid})
        assert r.status_code == 200, (rid, r.status_code, r.text[:300])
        return rid

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def proven(answer: dict) -> bool:
    """Each record's leaf hashes, with its inclusion proof, to the root of the checkpoint the answer names."""
    cp = parse_note(answer["checkpoint"]["note"])
    for entry in answer["records"]:
        leaf = base64.b64decode(entry["leaf_b64"])
        proof = [bytes.fromhex(h) for h in entry["inclusion_proof"]]
        if not verify_inclusion(leaf_hash(leaf), entry["index"], cp.size, proof, cp.root):
            return False
    return bool(answer["records"])


def lookups(fleet: Fleet, urls: list[str], ids: list[str]) -> dict[str, int]:
    """From every replica, every id: how many were found with a valid proof, and how many not."""
    counts = {"proven": 0, "missing": 0, "unproven": 0}
    lock = threading.Lock()
    local = threading.local()

    def one(job: tuple[str, str]) -> None:
        client = getattr(local, "client", None) or setattr(local, "client", httpx.Client(timeout=30)) or local.client
        base, rid = job
        r = client.get(f"{base}/admin/evidence/{rid}", headers=fleet.auth("auditor"))
        outcome = "missing" if r.status_code == 404 else ("proven" if r.status_code == 200 and proven(r.json()) else "unproven")
        with lock:
            counts[outcome] += 1

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        list(pool.map(one, [(base, rid) for base in urls for rid in ids]))
    return counts


def export(fleet: Fleet, url: str, since: float, out: Path) -> Path:
    r = httpx.get(f"{url}/admin/evidence/export", params={"since": since, "until": time.time() + 1, "reason": "audit"},
                  headers=fleet.auth("auditor"), timeout=120)
    assert r.status_code == 200, r.text[:500]
    out.write_bytes(r.content)
    return out


def verify(bundle: Path, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "evidence", "verify-bundle", str(bundle), *more],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with Fleet(replicas=3, store="redis", level=1, workdir=tmp_path_factory.mktemp("fleet")) as running:
        yield running


@pytest.fixture(scope="module")
def served(fleet):
    since = time.time() - 1
    ids = send_all(fleet, REQUESTS)
    time.sleep(3)  # a checkpoint interval: every replica has signed a checkpoint over what it served
    return since, ids


def test_every_replica_finds_every_request_with_a_valid_proof_and_one_export_holds_them_all(fleet, served, tmp_path):
    since, ids = served
    slots = sorted(p.name for p in fleet.evidence_dir.glob("replica-*"))
    assert len(slots) == 3, slots  # one log per replica, in the shared directory
    counts = lookups(fleet, [r.url for r in fleet.replicas], ids)
    assert counts == {"proven": 3 * REQUESTS, "missing": 0, "unproven": 0}

    bundle = export(fleet, fleet.replicas[0].url, since, tmp_path / "fleet.tar.gz")
    alone = verify(bundle)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "of 3 log(s)" in alone.stdout
    witnessed = verify(bundle, "--require-cosignatures", "1")
    assert witnessed.returncode == 0, witnessed.stdout + witnessed.stderr
    report = verify_bundle(bundle, require_cosignatures=2)  # each log witnessed by both other replicas
    assert report.ok and len(report.parts) == 3, report.problems[:5]
    assert set(ids) <= _request_ids(bundle)


def test_a_replica_whose_machine_is_lost_takes_no_evidence_with_it(fleet, served, tmp_path):
    since, ids = served
    lost = fleet.replicas[2]
    fleet.kill_replica(2)
    shutil.rmtree(lost.data_dir)
    survivors = [r.url for r in fleet.replicas[:2]]
    counts = lookups(fleet, survivors, ids[:600])
    assert counts == {"proven": 1200, "missing": 0, "unproven": 0}
    bundle = export(fleet, survivors[1], since, tmp_path / "after-loss.tar.gz")
    assert verify(bundle).returncode == 0
    assert set(ids) <= _request_ids(bundle)
    fleet.restart_replica(2)


def test_a_log_rewritten_with_its_own_key_is_caught_by_the_other_replicas_and_by_verify_bundle(fleet, served, tmp_path):
    since, ids = served
    victim = fleet.replicas[1]
    slot = _slot_of(fleet, victim.url)
    fleet.kill_replica(1)
    reader = LogReader.open(slot)
    records = [reader.get(i) for i in range(reader.size)]
    reader.close()
    target = next(i for i, r in enumerate(records) if r.get("request_id") in ids)
    records[target]["decision"] = "rewritten"
    _rewrite(slot, load_signing_key(fleet.signing_key_pub.with_suffix(".key")), records)  # the replica's own key
    fleet.restart_replica(1)

    time.sleep(3)  # witness intervals: the others look at the rewritten log's new checkpoint
    incidents = httpx.get(f"{fleet.replicas[0].url}/admin/incidents", headers=fleet.auth("operator")).json()
    tampering = [i for i in incidents.get("incidents", incidents if isinstance(incidents, list) else [])
                 if i.get("trigger") == "evidence_tampering"]
    assert tampering and tampering[0]["severity"] == "critical", incidents
    bundle = export(fleet, fleet.replicas[0].url, since, tmp_path / "after-rewrite.tar.gz")
    strict = verify(bundle, "--require-cosignatures", "1")
    assert strict.returncode == 1, strict.stdout
    assert "rewritten" in strict.stdout + strict.stderr


def _request_ids(bundle: Path) -> set[str]:
    import io
    import json
    import tarfile

    ids = set()
    with tarfile.open(bundle) as outer:
        for info in outer:
            if info.name.startswith("logs/"):
                with tarfile.open(fileobj=io.BytesIO(outer.extractfile(info).read())) as part:
                    for line in part.extractfile("records.jsonl").read().splitlines():
                        rid = json.loads(line)["record"].get("request_id")
                        if rid:
                            ids.add(rid)
    return ids


def _slot_of(fleet: Fleet, url: str) -> Path:
    """The slot of the log the replica at `url` writes (its checkpoints name its origin)."""
    origin = httpx.get(f"{url}/admin/evidence/checkpoints", headers=fleet.auth("auditor")).json()["log"]
    for slot in fleet.evidence_dir.glob("replica-*"):
        reader = LogReader.open(slot)
        try:
            if reader.origin == origin:
                return slot
        finally:
            reader.close()
    raise AssertionError(f"no slot holds the log {origin} of {url}")


def _rewrite(slot: Path, key, records: list[dict]) -> None:
    """The log in `slot` replaced by `records`, signed by `key`, with its identity kept (its replica is stopped).

    Holding the slot's lock meanwhile, as its writer would: no other replica adopts it halfway.
    """
    lock = os.open(slot / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        rewrite_log(slot, key, records)
    finally:
        os.close(lock)
