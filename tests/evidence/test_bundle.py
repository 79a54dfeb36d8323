"""Forensic export bundles: written from a real log, verified offline, every tampering named."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.evidence.bundle import BundleError, verify_bundle, write_bundle
from gateway.evidence.checkpoints import Checkpoint, parse_log
from gateway.evidence.crypto import generate_signing_key, public_pem, write_keypair
from gateway.evidence.merkle import inclusion_path, leaf_hash, mth_of_hashes

from .helpers import open_log, record

SELECTED = [17, 28, 15, 29, 24, 16, 17]   # unsorted, with a duplicate: the bundle is in log order
EXPECTED = sorted(set(SELECTED))
EXTRAS = {
    "config.yaml": b"evidence:\n  enabled: true\n",
    "policy.json": b'{"level": 2}\n',
    "incident.json": b'{"id": "inc-7", "summary": "model answered out of policy"}\n',
    "models/credit/3/model.sig": b'{"mediaType": "application/vnd.dev.sigstore.bundle+json"}',
}
DESCRIPTION = {"filters": {"since": 1_700_000_000.0, "until": None, "model": None}, "requested_by": "auditor-1"}


def bodies_for(i: int) -> dict[str, bytes] | None:
    if i % 4 == 0:
        return {"request": b"prompt #%d: is the applicant eligible?" % i, "response": "Oui, éligible".encode()}
    if i == 17:
        return {"request": b"\xff\xfe binary \x00 body"}
    return None


def build_log(directory: Path, key, n: int = 30, **kw):
    """An open log of n records (some with bodies), checkpointed several times."""
    log = open_log(directory, key, checkpoint_every=5, segment_max_bytes=2048, **kw)
    for i in range(n):
        log.append(record(i), bodies_for(i))
        if i % 7 == 6:
            log.sync_now()
    return log


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One log and one bundle of a subset, shared by the read-only tests (each tampering works on a copy)."""
    base = tmp_path_factory.mktemp("bundle")
    key = generate_signing_key()
    write_keypair(key, base / "gw.key", base / "gw.pub")
    log = build_log(base / "log", key)
    try:
        summary = write_bundle(base / "export.tar.gz", log, iter(SELECTED), signing_key=key, extras=EXTRAS,
                               description=DESCRIPTION)
        leaves = {i: log.read_leaf(i) for i in range(log.size)}
        checkpoints_log = (base / "log" / "checkpoints.log").read_bytes()
    finally:
        log.close()
    return {"base": base, "key": key, "pub": base / "gw.pub", "bundle": base / "export.tar.gz",
            "summary": summary, "leaves": leaves, "checkpoints_log": checkpoints_log}


# ------------------------------------------------------------------ archive helpers

def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def pack(path: Path, files: dict[str, bytes], special: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special:
            tar.addfile(info)
    return path


def resign(files: dict[str, bytes], key, **description_changes) -> dict[str, bytes]:
    """What an attacker with their own key does: fix up the manifest's hashes and sign it again."""
    files = dict(files)
    files["manifest-key.pub"] = public_pem(key.public_key())
    manifest = json.loads(files["manifest.json"])
    manifest["description"].update(description_changes)
    manifest["files"] = [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                         for n, d in sorted(files.items()) if n not in ("manifest.json", "manifest.sig")]
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    files["manifest.sig"] = base64.b64encode(key.sign(files["manifest.json"])) + b"\n"
    return files


def record_lines(files: dict[str, bytes]) -> list[dict]:
    return [json.loads(line) for line in files["records.jsonl"].splitlines()]


def with_records(files: dict[str, bytes], lines: list[dict]) -> dict[str, bytes]:
    return {**files, "records.jsonl": b"".join(json.dumps(x).encode() + b"\n" for x in lines)}


def decode(bodies: dict[str, dict[str, str]]) -> dict[str, bytes]:
    return {n: b["body"].encode() if b["body_encoding"] == "utf-8" else base64.b64decode(b["body"])
            for n, b in bodies.items()}


def cli(*args) -> int:
    return main(["evidence", "verify-bundle", *map(str, args)])


# ------------------------------------------------------------------ it verifies

def test_bundle_verifies_with_the_function_and_the_cli(made, capsys):
    report = verify_bundle(made["bundle"])
    assert report.ok, report.problems
    assert report.first_problem is None
    assert report.records == len(EXPECTED)
    assert report.checkpoint.size == 30 and report.checkpoint == made["summary"].checkpoint
    assert "trust rests on the bundle itself" in " ".join(report.notes)
    assert report.summary().startswith("OK: 6 record(s) proven against checkpoint size 30 root ")

    assert cli(made["bundle"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("OK: ") and "keys inside the bundle" in out

    assert cli(made["bundle"], "--key", made["pub"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and "the given key" in out
    assert verify_bundle(made["bundle"], trusted_keys=[made["key"].public_key()]).ok


def test_a_wrong_key_fails(made, tmp_path, capsys):
    other = generate_signing_key()
    write_keypair(other, tmp_path / "o.key", tmp_path / "o.pub")
    report = verify_bundle(made["bundle"], trusted_keys=[other.public_key()])
    assert not report.ok
    assert report.first_problem.where == "manifest signature"
    assert any(p.where.startswith("checkpoint #0") and "not validly signed" in p.reason for p in report.problems)
    assert cli(made["bundle"], "--key", tmp_path / "o.pub") == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("FAILED: manifest signature: ")
    # both keys given (e.g. a rotated key): verifies again
    assert cli(made["bundle"], "--key", tmp_path / "o.pub", "--key", made["pub"]) == 0


def test_unreadable_inputs_exit_2_without_traceback(made, tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("hello")
    pack(tmp_path / "other.tar.gz", {"notes.txt": b"not a bundle"})
    cases = [(tmp_path / "missing.tar.gz", "not a readable"), (tmp_path / "plain.txt", "not a readable"),
             (tmp_path, "not a readable"), (tmp_path / "other.tar.gz", "not an evidence bundle")]
    for path, needle in cases:
        assert cli(path) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    with pytest.raises(BundleError):
        verify_bundle(tmp_path / "other.tar.gz")
    assert cli(made["bundle"], "--key", made["base"] / "gw.key") == 2  # a private key is not a public key
    assert "cannot read public key" in capsys.readouterr().err
    assert cli(made["bundle"], "--key", tmp_path / "nope.pub") == 2
    capsys.readouterr()
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(made["bundle"].read_bytes()[:-200])
    assert cli(truncated) == 2
    assert "not a readable" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "gateway", "evidence", "verify-bundle", str(tmp_path / "plain.txt")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------ what is in it

def test_layout_records_proofs_and_checkpoints(made):
    files = members(made["bundle"])
    assert set(files) == {"README.txt", "manifest.json", "manifest.sig", "manifest-key.pub", "checkpoint-keys.pem",
                          "checkpoints.txt", "consistency.json", "records.jsonl", "decrypted-bodies.jsonl", *EXTRAS}
    for name, data in EXTRAS.items():
        assert files[name] == data
    lines = record_lines(files)
    assert [x["index"] for x in lines] == EXPECTED
    for x in lines:
        leaf = made["leaves"][x["index"]]
        assert base64.b64decode(x["leaf_b64"]) == leaf
        assert x["record"] == json.loads(leaf)
        assert x["tree_size"] == 30
        assert list(x) == ["index", "leaf_b64", "record", "tree_size", "inclusion_proof"]
    # the notes exactly as stored: the log's first, the last before record 15 (size 14), the one used
    stored, end, _ = parse_log(made["checkpoints_log"])
    slices = {e.checkpoint.size: made["checkpoints_log"][e.offset:(stored[e.number + 1].offset if e.number + 1 < len(stored) else end)]
              for e in stored if e.checkpoint is not None}
    assert sorted(slices)[:2] == [0, 7] and 14 in slices
    assert files["checkpoints.txt"] == slices[0] + slices[14] + slices[30]
    notes, _, _ = parse_log(files["checkpoints.txt"])
    assert notes[-1].checkpoint == made["summary"].checkpoint
    proofs = json.loads(files["consistency.json"])["proofs"]
    assert len(proofs) == len(notes) - 1 == 2
    assert [(p["from_size"], p["to_size"]) for p in proofs] == \
        [(a.checkpoint.size, b.checkpoint.size) for a, b in itertools.pairwise(notes)]
    assert any(p["proof"] for p in proofs)
    manifest = json.loads(files["manifest.json"])
    listed = {f["name"] for f in manifest["files"]}
    assert listed == set(files) - {"manifest.json", "manifest.sig"}
    desc = manifest["description"]
    assert desc["filters"] == DESCRIPTION["filters"] and desc["requested_by"] == "auditor-1"
    assert desc["checkpoint"]["size"] == 30 and desc["checkpoint"]["root"] == made["summary"].checkpoint.root.hex()
    assert desc["origin"].startswith("oversight-gateway/evidence/") and desc["created"] > 0
    assert b"gateway evidence verify-bundle" in files["README.txt"]
    assert files["checkpoint-keys.pem"] == (made["base"] / "log" / "checkpoint-keys.pem").read_bytes()
    assert files["manifest-key.pub"] == made["pub"].read_bytes()


def test_tar_entries_are_deterministic_and_the_file_private(made):
    with tarfile.open(made["bundle"], "r:gz") as tar:
        infos = tar.getmembers()
    assert len({m.mtime for m in infos}) == 1
    assert all(m.isreg() and m.mode == 0o644 and m.uid == m.gid == 0 and m.uname == m.gname == "" for m in infos)
    assert stat.S_IMODE(made["bundle"].stat().st_mode) == 0o600  # it holds decrypted bodies
    assert [p.name for p in made["bundle"].parent.iterdir() if p.name.startswith(".")] == []
    s = made["summary"]
    assert s.sha256 == hashlib.sha256(made["bundle"].read_bytes()).hexdigest() and s.size == made["bundle"].stat().st_size
    assert s.records == 6 and s.files[0] == "README.txt"


def test_plain_bodies_are_exported_and_checked_against_the_leaf(made):
    files = members(made["bundle"])
    got = {x["index"]: x["bodies"] for x in map(json.loads, files["decrypted-bodies.jsonl"].splitlines())}
    assert sorted(got) == [16, 17, 24, 28]  # the selected records that have bodies
    assert got[16]["request"] == {"body": "prompt #16: is the applicant eligible?", "body_encoding": "utf-8"}
    assert got[16]["response"] == {"body": "Oui, éligible", "body_encoding": "utf-8"}
    assert got[17]["request"]["body_encoding"] == "base64"
    assert base64.b64decode(got[17]["request"]["body"]) == bodies_for(17)["request"]
    # stored without encryption, so the leaf vouches for them: a changed body is caught even re-signed
    lines = [json.loads(x) for x in files["decrypted-bodies.jsonl"].splitlines()]
    lines[0]["bodies"]["request"]["body"] = "prompt #16: approve everything"
    forged = {**files, "decrypted-bodies.jsonl": b"".join(json.dumps(x).encode() + b"\n" for x in lines)}
    attacker = generate_signing_key()
    report = verify_bundle(pack(Path(made["base"]) / "bodies-forged.tar.gz", resign(forged, attacker)))
    assert report.first_problem.where == "decrypted bodies of record 16"
    assert "differs from the one stored in the leaf" in report.first_problem.reason


def test_encrypted_bodies_are_decrypted_into_the_bundle(tmp_path, key):
    log = build_log(tmp_path / "log", key, n=12, encryption_key=os.urandom(32), key_id="k1")
    try:
        summary = write_bundle(tmp_path / "enc.tar.gz", log, range(12), signing_key=key, extras={},
                               description={"filters": {}})
    finally:
        log.close()
    files = members(tmp_path / "enc.tar.gz")
    got = {x["index"]: x["bodies"] for x in map(json.loads, files["decrypted-bodies.jsonl"].splitlines())}
    assert sorted(got) == [0, 4, 8] and summary.bodies == 3 and summary.not_decrypted == ()
    for i, bodies in got.items():
        assert decode(bodies) == bodies_for(i)
    assert got[8]["response"] == {"body": "Oui, éligible", "body_encoding": "utf-8"}
    assert b"eligible" not in files["records.jsonl"]  # the records carry the ciphertext only
    report = verify_bundle(tmp_path / "enc.tar.gz", trusted_keys=[key.public_key()])
    assert report.ok and report.bodies == 3
    assert any("vouched for by the manifest signature only" in n for n in report.notes)


def test_records_whose_key_is_unknown_are_listed_not_exported(tmp_path, key):
    log = build_log(tmp_path / "log", key, n=5, encryption_key=os.urandom(32), key_id="old")
    log.close()
    log = open_log(tmp_path / "log", key, encryption_key=os.urandom(32), key_id="new")  # "old" not given
    try:
        summary = write_bundle(tmp_path / "b.tar.gz", log, [0, 1, 4], signing_key=key, extras={}, description={})
    finally:
        log.close()
    assert summary.bodies == 0 and summary.not_decrypted == (0, 4)
    files = members(tmp_path / "b.tar.gz")
    assert files["decrypted-bodies.jsonl"] == b""
    assert json.loads(files["manifest.json"])["description"]["records_with_bodies_not_decrypted"] == [0, 4]
    assert verify_bundle(tmp_path / "b.tar.gz").ok


def test_self_contained_after_the_log_is_deleted(tmp_path, key):
    write_keypair(key, tmp_path / "k.key", tmp_path / "k.pub")
    log = build_log(tmp_path / "log", key, n=20)
    try:
        write_bundle(tmp_path / "b.tar.gz", log, log.select(model="m-a"), signing_key=key, extras=EXTRAS,
                     description={"filters": {"model": "m-a"}})
    finally:
        log.close()
    shutil.rmtree(tmp_path / "log")
    report = verify_bundle(tmp_path / "b.tar.gz", trusted_keys=[key.public_key()])
    assert report.ok and report.records == 10
    assert cli(tmp_path / "b.tar.gz", "--key", tmp_path / "k.pub") == 0


# ------------------------------------------------------------------ tampering

MEMBER_FLIPS = [
    ("records.jsonl", "records.jsonl"),
    ("decrypted-bodies.jsonl", "decrypted-bodies.jsonl"),
    ("checkpoints.txt", "checkpoints.txt"),
    ("consistency.json", "consistency.json"),
    ("checkpoint-keys.pem", "checkpoint-keys.pem"),
    ("README.txt", "README.txt"),
    ("config.yaml", "config.yaml"),
    ("models/credit/3/model.sig", "models/credit/3/model.sig"),
    ("manifest.json", "manifest signature"),
    ("manifest.sig", "manifest signature"),
    ("manifest-key.pub", "manifest signature"),
]


@pytest.mark.parametrize("member,where", MEMBER_FLIPS, ids=[m for m, _ in MEMBER_FLIPS])
def test_one_changed_byte_in_any_file_is_named(made, tmp_path, capsys, member, where):
    files = members(made["bundle"])
    data = bytearray(files[member])
    data[len(data) // 2] ^= 0x01
    files[member] = bytes(data)
    bad = pack(tmp_path / "bad.tar.gz", files)
    report = verify_bundle(bad)
    assert not report.ok
    assert report.first_problem.where == where, report.problems
    if where == member:
        assert "sha256 differs from the manifest" in report.first_problem.reason
    assert cli(bad) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"FAILED: {where}: ")


def test_an_added_file_is_named(made, tmp_path):
    files = members(made["bundle"])
    files["notes/extra.txt"] = b"planted"
    report = verify_bundle(pack(tmp_path / "b.tar.gz", files))
    assert report.first_problem.where == "notes/extra.txt"
    assert "not in the manifest" in report.first_problem.reason


@pytest.mark.parametrize("member", ["records.jsonl", "checkpoints.txt", "policy.json", "decrypted-bodies.jsonl"])
def test_a_removed_file_is_named(made, tmp_path, member):
    files = members(made["bundle"])
    del files[member]
    report = verify_bundle(pack(tmp_path / "b.tar.gz", files))
    assert report.first_problem.where == member
    assert "missing from the bundle" in report.first_problem.reason


def test_a_removed_manifest_signature_is_named(made, tmp_path):
    files = members(made["bundle"])
    del files["manifest.sig"]
    report = verify_bundle(pack(tmp_path / "b.tar.gz", files))
    assert report.first_problem.where == "manifest signature" and "manifest.sig is missing" in report.first_problem.reason


def test_edited_proof_resigned_by_an_attacker(made, tmp_path, capsys):
    files = members(made["bundle"])
    lines = record_lines(files)
    proof = lines[2]["inclusion_proof"]
    proof[0] = hashlib.sha256(b"forged").hexdigest()
    forged = pack(tmp_path / "forged.tar.gz", resign(with_records(files, lines), generate_signing_key()))
    # with the gateway's key: the manifest was not signed by it
    report = verify_bundle(forged, trusted_keys=[made["key"].public_key()])
    assert report.first_problem.where == "manifest signature"
    assert cli(forged, "--key", made["pub"]) == 1
    assert capsys.readouterr().out.startswith("FAILED: manifest signature: ")
    # without it the manifest checks out, but the proof no longer leads to the signed root
    report = verify_bundle(forged)
    assert report.first_problem.where == f"record {EXPECTED[2]}"
    assert "inclusion proof does not lead" in report.first_problem.reason
    assert len(report.problems) == 1


def test_edited_record_or_leaf_resigned(made, tmp_path):
    files = members(made["bundle"])
    attacker = generate_signing_key()
    lines = record_lines(files)
    lines[1]["record"]["decision"] = "deny"  # the readable copy disagrees with the leaf
    report = verify_bundle(pack(tmp_path / "a.tar.gz", resign(with_records(files, lines), attacker)))
    assert report.first_problem.where == f"record {EXPECTED[1]}" and "not the JSON of the leaf" in report.first_problem.reason

    lines = record_lines(files)
    leaf = json.loads(base64.b64decode(lines[1]["leaf_b64"]))
    leaf["decision"] = "deny"
    lines[1]["record"] = leaf
    lines[1]["leaf_b64"] = base64.b64encode(json.dumps(leaf, sort_keys=True, separators=(",", ":")).encode()).decode()
    report = verify_bundle(pack(tmp_path / "b.tar.gz", resign(with_records(files, lines), attacker)))
    assert report.first_problem.where == f"record {EXPECTED[1]}" and "inclusion proof" in report.first_problem.reason

    lines = record_lines(files)
    lines[1], lines[2] = lines[2], lines[1]
    report = verify_bundle(pack(tmp_path / "c.tar.gz", resign(with_records(files, lines), attacker)))
    assert report.first_problem.where == f"record {EXPECTED[1]}" and "strictly greater" in report.first_problem.reason


def test_edited_checkpoint_or_consistency_proof_resigned(made, tmp_path):
    files = members(made["bundle"])
    attacker = generate_signing_key()
    text = files["checkpoints.txt"].decode()
    cut = text.index("\ntime ") + 1
    forged = {**files, "checkpoints.txt": (text[:cut] + "time 1.000000" + text[text.index("\n", cut):]).encode()}
    report = verify_bundle(pack(tmp_path / "a.tar.gz", resign(forged, attacker)))
    assert report.first_problem.where.startswith("checkpoint #0 ") and "not validly signed" in report.first_problem.reason

    doc = json.loads(files["consistency.json"])
    entry = next(p for p in doc["proofs"] if p["proof"])
    entry["proof"][-1] = hashlib.sha256(b"x").hexdigest()
    forged = {**files, "consistency.json": json.dumps(doc).encode()}
    report = verify_bundle(pack(tmp_path / "b.tar.gz", resign(forged, attacker)))
    assert report.first_problem.where.startswith(f"checkpoint #{entry['to']} ")
    assert f"not consistent with checkpoint #{entry['from']}" in report.first_problem.reason


def test_a_complete_forgery_with_the_attackers_keys_only_fails_with_key(made, tmp_path, capsys):
    """Everything re-made under another key verifies on its own terms: that is why --key matters."""
    files = members(made["bundle"])
    attacker = generate_signing_key()
    lines = record_lines(files)
    size = lines[0]["tree_size"]
    hashes = [hashlib.sha256(b"filler %d" % i).digest() for i in range(size)]
    for x in lines:
        x["record"]["decision"] = "deny"
        leaf = json.dumps(x["record"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        x["leaf_b64"] = base64.b64encode(leaf).decode()
        hashes[x["index"]] = leaf_hash(leaf)
    for x in lines:
        x["inclusion_proof"] = [h.hex() for h in
                                inclusion_path(x["index"], size, lambda s, n: mth_of_hashes(hashes[s:s + n]))]
    manifest = json.loads(files["manifest.json"])
    origin = manifest["description"]["origin"]
    cp = Checkpoint(origin, size, mth_of_hashes(hashes), 1_700_000_000.0).signed(attacker)
    forged = with_records(files, lines)
    forged.pop("decrypted-bodies.jsonl")
    forged.update({"decrypted-bodies.jsonl": b"", "checkpoints.txt": (cp.note() + "\n").encode(),
                   "consistency.json": b'{"checkpoints": 1, "proofs": []}',
                   "checkpoint-keys.pem": public_pem(attacker.public_key())})
    path = pack(tmp_path / "forged.tar.gz",
                resign(forged, attacker, checkpoint={"number": 0, "size": size, "root": cp.root.hex()}))
    report = verify_bundle(path)
    assert report.ok, report.problems
    assert "trust rests on the bundle itself" in " ".join(report.notes)
    report = verify_bundle(path, trusted_keys=[made["key"].public_key()])
    assert [p.where for p in report.problems] == ["manifest signature", "checkpoint #0 (size 30)"]
    assert cli(path, "--key", made["pub"]) == 1
    capsys.readouterr()


def test_unsafe_archive_members_are_refused_never_extracted(made, tmp_path, capsys):
    files = members(made["bundle"])
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        ({**files, "../escaped.txt": b"x"}, [], "archive member '../escaped.txt'", "'..'"),
        ({**files, "models/../../escaped.txt": b"x"}, [], "archive member 'models/../../escaped.txt'", "'..'"),
        ({**files, "/tmp/absolute.txt": b"x"}, [], "archive member '/tmp/absolute.txt'", "absolute"),
        ({**files, "a\\b.txt": b"x"}, [], "archive member 'a\\\\b.txt'", "backslash"),
        (files, [link], "archive member 'link'", "a link"),
        (files, [dev], "archive member 'dev'", "device"),
    ]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for n, (content, special, where, why) in enumerate(cases):
            path = pack(tmp_path / f"u{n}.tar.gz", content, special)
            report = verify_bundle(path)
            assert report.first_problem.where == where, report.problems
            assert why in report.first_problem.reason and "refused" in report.first_problem.reason
            assert cli(path) == 1
            capsys.readouterr()
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "escaped.txt").exists() and list(work.iterdir()) == []


def test_a_duplicate_member_is_refused(made, tmp_path):
    path = tmp_path / "dup.tar.gz"
    pack(path, members(made["bundle"]))
    files = members(made["bundle"])
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [*files.items(), ("records.jsonl", b"shadow\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = verify_bundle(path)
    assert report.first_problem.where == "archive member 'records.jsonl'"
    assert "same name" in report.first_problem.reason


def test_garbage_never_raises(made, tmp_path):
    """Random damage, re-signed so it reaches the parsers: always a report or BundleError, never a crash."""
    files = members(made["bundle"])
    attacker = generate_signing_key()
    rng = random.Random(7)
    failed = 0
    for n in range(40):
        name = rng.choice(["records.jsonl", "consistency.json", "checkpoints.txt", "decrypted-bodies.jsonl",
                           "manifest.json", "checkpoint-keys.pem"])
        data = bytearray(files[name])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        damaged = {**files, name: bytes(data)}
        if name != "manifest.json":
            damaged = resign(damaged, attacker)
        report = verify_bundle(pack(tmp_path / f"g{n}.tar.gz", damaged))
        failed += not report.ok
        # the bundle's own keys may vouch for a harmless change; checked against the gateway's key, none passes
        independent = verify_bundle(tmp_path / f"g{n}.tar.gz", trusted_keys=[made["key"].public_key()])
        assert not independent.ok and independent.summary().startswith("FAILED: "), (name, report.summary())
    assert failed >= 35  # a few changes can be harmless (e.g. JSON whitespace); most are caught
    raw = made["bundle"].read_bytes()
    for n in range(20):
        data = bytearray(raw)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        (tmp_path / "z.tar.gz").write_bytes(bytes(data))
        try:  # a flip in the gzip header's mtime or in tar padding changes no content: it may still verify
            verify_bundle(tmp_path / "z.tar.gz").summary()
        except BundleError:
            pass


# ------------------------------------------------------------------ writing

@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a\\b", "a//b", "./a", "a/", "",
                                  "manifest.json", "records.jsonl"])
def test_bad_extra_names_are_rejected(tmp_path, key, name):
    log = build_log(tmp_path / "log", key, n=3)
    try:
        with pytest.raises(ValueError):
            write_bundle(tmp_path / "b.tar.gz", log, [0], signing_key=key, extras={name: b"x"}, description={})
    finally:
        log.close()
    assert not (tmp_path / "b.tar.gz").exists()


def test_an_extra_name_used_as_file_and_directory_is_rejected(tmp_path, key):
    log = build_log(tmp_path / "log", key, n=1)
    try:
        with pytest.raises(ValueError, match="directory"):
            write_bundle(tmp_path / "b.tar.gz", log, [0], signing_key=key, extras={"models": b"x", "models/a": b"y"},
                         description={})
    finally:
        log.close()


def test_out_of_range_index_is_rejected(tmp_path, key):
    log = build_log(tmp_path / "log", key, n=3)
    try:
        with pytest.raises(ValueError, match="not in the log"):
            write_bundle(tmp_path / "b.tar.gz", log, [1, 3], signing_key=key, extras={}, description={})
        with pytest.raises(ValueError):
            write_bundle(tmp_path / "b.tar.gz", log, [-1], signing_key=key, extras={}, description={})
    finally:
        log.close()


def test_records_appended_after_the_last_checkpoint_are_covered(tmp_path, key):
    log = open_log(tmp_path / "log", key, checkpoint_every=1000, checkpoint_seconds=3600)
    try:
        for i in range(9):
            log.append(record(i))
        assert log.latest_checkpoint().size == 0  # nothing signed yet
        summary = write_bundle(tmp_path / "b.tar.gz", log, [8], signing_key=key, extras={}, description={})
    finally:
        log.close()
    assert summary.checkpoint.size == 9
    assert verify_bundle(tmp_path / "b.tar.gz", trusted_keys=[key.public_key()]).ok


def test_an_unsigned_log_cannot_back_a_bundle(tmp_path, key):
    log = open_log(tmp_path / "log", None)
    try:
        log.append(record(0))
        with pytest.raises(BundleError, match="checkpoint-keys.pem"):
            write_bundle(tmp_path / "b.tar.gz", log, [0], signing_key=key, extras={}, description={})
    finally:
        log.close()
    assert not (tmp_path / "b.tar.gz").exists()


def test_a_failed_write_leaves_no_partial_bundle(tmp_path, key, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    log = build_log(tmp_path / "log", key, n=6)
    try:
        write_bundle(out / "b.tar.gz", log, [1], signing_key=key, extras={}, description={})
        before = (out / "b.tar.gz").read_bytes()
        calls = []
        real = tarfile.TarFile.addfile

        def failing(self, info, fileobj=None):
            calls.append(info.name)
            if info.name == "records.jsonl":
                raise OSError("disk full")
            return real(self, info, fileobj)

        monkeypatch.setattr(tarfile.TarFile, "addfile", failing)
        with pytest.raises(OSError, match="disk full"):
            write_bundle(out / "b.tar.gz", log, [1, 2], signing_key=key, extras={}, description={})
        with pytest.raises(OSError, match="disk full"):
            write_bundle(out / "new.tar.gz", log, [1, 2], signing_key=key, extras={}, description={})
    finally:
        log.close()
    assert calls.count("records.jsonl") == 2 and len(calls) > 2
    assert sorted(p.name for p in out.iterdir()) == ["b.tar.gz"]  # no temp file, no half bundle
    assert (out / "b.tar.gz").read_bytes() == before
