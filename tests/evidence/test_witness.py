"""Logs that read and witness each other: a reader of another writer's log, cosignatures, fleet bundles.

A fleet keeps one log per writer. These tests build two real logs in separate folders (as
two replicas' slots), read one from the other's side, witness it, export both as one
bundle, then rewrite one log with its own key and show that its witness and the
bundle verifier both see it.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from gateway.evidence import (EvidenceLog, LogReader, Witness, read_witnessed, verify_bundle, write_bundle,
                              write_fleet_bundle)
from gateway.evidence.cosignature import cosign, parse_witnessed, witness_name
from gateway.evidence.crypto import generate_signing_key, public_pem

from .helpers import open_log, rewrite_log


def fill(log: EvidenceLog, start: int, n: int, *, tag: str = "") -> None:
    for i in range(start, start + n):
        log.append({"kind": "decision", "request_id": f"req-{i}", "model": "credit", "time": 1_000 + i,
                    "decision": f"approve{tag}"})
    log.checkpoint_now()


@pytest.fixture
def fleet(tmp_path):
    """Two writers' logs (A and B), with their signing keys and a witness each."""
    keys = {"a": generate_signing_key(), "b": generate_signing_key()}
    logs = {name: open_log(tmp_path / f"replica-{n}", keys[name]) for n, name in enumerate("ab")}
    witnesses = {name: Witness(generate_signing_key(), tmp_path / f"replica-{n}") for n, name in enumerate("ab")}
    yield tmp_path, keys, logs, witnesses
    for log in logs.values():
        log.close()


def test_a_reader_sees_what_the_writers_latest_checkpoint_covers_and_nothing_past_it(fleet):
    root, _, logs, _ = fleet
    fill(logs["b"], 0, 10)
    logs["b"].append({"kind": "decision", "request_id": "req-late", "time": 2_000})
    logs["b"].sync_now()
    reader = LogReader.open(root / "replica-1")
    assert reader.origin == logs["b"].origin
    assert reader.size == 10 and reader.find("req-3") == [3] and reader.find("req-late") == []
    assert list(reader.select(1_002, 1_005)) == [2, 3, 4]
    assert reader.get(3)["request_id"] == "req-3"
    assert reader.root() == logs["b"].root(10)
    assert reader.inclusion_proof(3, 10) == logs["b"].inclusion_proof(3, 10)
    logs["b"].checkpoint_now()
    assert reader.refresh().size == 11 and reader.find("req-late") == [10]
    assert reader.consistency_proof(10, 11) == logs["b"].consistency_proof(10, 11)
    with pytest.raises(IndexError):
        reader.read_leaf(11)


def test_a_witness_cosigns_each_extension_and_resumes_from_its_file(fleet):
    root, _, logs, witnesses = fleet
    reader = LogReader.open(root / "replica-1")
    fill(logs["b"], 0, 5)
    first = witnesses["a"].observe(reader)
    assert first.outcome == "cosigned" and first.checkpoint.size == 5
    assert witnesses["a"].observe(reader).outcome == "unchanged"
    fill(logs["b"], 5, 5)
    assert witnesses["a"].observe(reader).outcome == "cosigned"
    entries = read_witnessed(root / "replica-0" / "witnessed.jsonl")
    assert [(origin, w.checkpoint.size) for origin, w in entries] == [(logs["b"].origin, 5), (logs["b"].origin, 10)]
    key = witnesses["a"].public_key
    assert all(w.cosignatures[0].verifies(w.checkpoint, key) for _, w in entries)
    assert not entries[0][1].cosignatures[0].verifies(entries[1][1].checkpoint, key)  # bound to its checkpoint
    again = Witness(witnesses["a"].key, root / "replica-0")
    assert again.last_cosigned(logs["b"].origin).size == 10


def test_a_cosigned_note_is_a_signed_note_with_one_more_line_in_the_c2sp_shape(fleet):
    _, keys, logs, _ = fleet
    fill(logs["a"], 0, 3)
    cp = logs["a"].latest_checkpoint()
    witness = generate_signing_key()
    cosig = cosign(cp, witness, witness_name(witness.public_key()), 1_700_000_000)
    note = cp.note() + cosig.line()
    assert note.count("\n\u2014 ") == 2
    parsed = parse_witnessed(note)
    assert parsed.checkpoint == cp and parsed.cosignatures == (cosig,)
    assert parsed.checkpoint.verified_by([keys["a"].public_key()]) and cosig.verifies(cp, witness.public_key())
    assert cosig.timestamp == 1_700_000_000


def test_a_log_rewritten_with_its_own_key_is_refused_by_its_witness_and_fails_required_cosignatures(fleet, tmp_path):
    root, keys, logs, witnesses = fleet
    fill(logs["b"], 0, 20)
    reader = LogReader.open(root / "replica-1")
    assert witnesses["a"].observe(reader).outcome == "cosigned"
    cosigned = [w for origin, w in read_witnessed(root / "replica-0" / "witnessed.jsonl")]
    witness_pem = public_pem(witnesses["a"].public_key)
    honest = write_bundle(tmp_path / "honest.tar.gz", reader, range(20), signing_key=keys["a"], extras={},
                          description={}, checkpoint=reader.latest_checkpoint(), cosigned=cosigned,
                          witness_keys=witness_pem)
    report = verify_bundle(honest.path, require_cosignatures=1)
    assert report.ok, report.problems
    assert report.witnesses == 1 and honest.witnesses == 1

    records = [reader.get(i) for i in range(20)]
    records[7]["decision"] = "deny"  # the one answer someone wants to have been different
    logs["b"].close()
    rewrite_log(root / "replica-1", keys["b"], records + [{"kind": "decision", "request_id": "req-20", "time": 1_020}])
    forged_reader = LogReader.open(root / "replica-1")
    assert forged_reader.latest_checkpoint().verified_by([keys["b"].public_key()])  # its own key vouches for it

    seen = witnesses["a"].observe(forged_reader)
    assert seen.outcome == "inconsistent" and "rewritten" in seen.reason
    assert witnesses["a"].observe(forged_reader).outcome == "inconsistent"  # and it never cosigns it later

    forged = write_bundle(tmp_path / "forged.tar.gz", forged_reader, range(21), signing_key=keys["a"], extras={},
                          description={}, checkpoint=forged_reader.latest_checkpoint(), cosigned=cosigned,
                          witness_keys=witness_pem)
    alone = verify_bundle(forged.path)
    assert not alone.ok and any("rewritten" in p.reason for p in alone.problems)
    strict = verify_bundle(forged.path, require_cosignatures=1)
    assert any("0 witness(es) cosigned" in p.reason for p in strict.problems)
    bare = write_bundle(tmp_path / "bare.tar.gz", forged_reader, range(21), signing_key=keys["a"], extras={},
                        description={}, checkpoint=forged_reader.latest_checkpoint())
    assert verify_bundle(bare.path).ok  # without witnesses the forgery is self-consistent...
    assert not verify_bundle(bare.path, require_cosignatures=1).ok  # ...which is why a verifier can demand them


def test_a_witness_does_not_count_for_its_own_log_and_an_unknown_witness_key_does_not_count(fleet, tmp_path):
    root, keys, logs, witnesses = fleet
    fill(logs["b"], 0, 4)
    reader = LogReader.open(root / "replica-1")
    self_witness = Witness(keys["b"], root / "replica-1")  # B's own log key as a "witness" of B
    assert self_witness.observe(reader).outcome == "cosigned"
    cosigned = [w for _, w in read_witnessed(root / "replica-1" / "witnessed.jsonl")]
    bundle = write_bundle(tmp_path / "self.tar.gz", reader, range(4), signing_key=keys["a"], extras={}, description={},
                          checkpoint=reader.latest_checkpoint(), cosigned=cosigned,
                          witness_keys=public_pem(keys["b"].public_key()))
    assert verify_bundle(bundle.path, require_cosignatures=1).witnesses == 0
    stranger = generate_signing_key().public_key()
    report = verify_bundle(bundle.path, witness_keys=[stranger])
    assert any("does not verify" in p.reason for p in report.problems)


def test_a_fleet_bundle_holds_every_logs_part_and_names_a_removed_or_swapped_part(fleet, tmp_path):
    root, keys, logs, witnesses = fleet
    fill(logs["a"], 0, 6)
    fill(logs["b"], 0, 9)
    readers = {"a": LogReader.open(root / "replica-0"), "b": LogReader.open(root / "replica-1")}
    assert witnesses["a"].observe(readers["b"]).outcome == "cosigned"
    assert witnesses["b"].observe(readers["a"]).outcome == "cosigned"
    parts = []
    for n, (name, other) in enumerate([("a", "b"), ("b", "a")]):
        cosigned = [w for origin, w in read_witnessed(root / f"replica-{1 - n}" / "witnessed.jsonl")
                    if origin == readers[name].origin]
        parts.append(write_bundle(tmp_path / f"part-{name}.tar.gz", logs[name], range(readers[name].size),
                                  signing_key=keys["a"], extras={}, description={}, cosigned=cosigned,
                                  witness_keys=public_pem(witnesses[other].public_key)))
    out = write_fleet_bundle(tmp_path / "fleet.tar.gz", parts, signing_key=keys["a"],
                             extras={"config.yaml": b"store: embedded\n"}, description={"requested_by": "auditor"})
    assert out.records == 15
    report = verify_bundle(out.path, require_cosignatures=1)
    assert report.ok, report.problems
    assert report.records == 15 and len(report.parts) == 2 and "15 record(s) of 2 log(s)" in report.verified()

    def repack(name: str, drop: str | None = None, replace: tuple[str, bytes] | None = None) -> Path:
        target = tmp_path / name
        with tarfile.open(out.path) as src, tarfile.open(target, "w:gz") as dst:
            for info in src:
                if info.name == drop:
                    continue
                data = src.extractfile(info).read()
                if replace and info.name == replace[0]:
                    data = replace[1]
                    info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
        return target

    removed = verify_bundle(repack("removed.tar.gz", drop="logs/01.tar.gz"))
    assert any(p.where == "logs/01.tar.gz" and "removed" in p.reason for p in removed.problems)
    swapped = verify_bundle(repack("swapped.tar.gz", replace=("logs/01.tar.gz", parts[0].path.read_bytes())))
    assert not swapped.ok and any(p.where == "logs/01.tar.gz" for p in swapped.problems)
