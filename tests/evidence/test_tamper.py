"""verify_log against each kind of tampering: it must fail and name the right record."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from gateway.evidence import verify_log
from gateway.evidence.checkpoints import Checkpoint, parse_log
from gateway.evidence.crypto import generate_signing_key, public_pem
from gateway.evidence.segments import list_segments

from .helpers import fill, frames, open_log, record, splice

N = 40


@pytest.fixture
def log_dir(tmp_path, key):
    fill(tmp_path, key, N)
    report = verify_log(tmp_path, key.public_key())
    assert report.ok, report.summary()
    assert report.records == N and report.segments > 2
    return tmp_path


def first(report):
    assert not report.ok, "tampering went unnoticed"
    return report.first_problem


def test_byte_edited(log_dir, key):
    f = frames(log_dir)[17]
    data = bytearray(f.path.read_bytes())
    data[f.offset + 8 + 20] ^= 0x20
    f.path.write_bytes(bytes(data))
    p = first(verify_log(log_dir, key.public_key()))
    assert (p.index, p.segment, p.offset) == (17, f.path.name, f.offset)
    assert "checksum" in p.reason


def test_byte_edited_with_checksum_recomputed(log_dir, key):
    """The CRC is no defence; the leaf hash and the signed roots are."""
    f = frames(log_dir)[17]
    edited = f.payload.replace(b'"allow"', b'"block"')
    assert edited != f.payload
    splice(f.path, f.offset, f.length, struct.pack(">II", len(edited), zlib.crc32(edited)) + edited)
    report = verify_log(log_dir, key.public_key())
    p = first(report)
    assert (p.index, p.segment, p.offset) == (17, f.path.name, f.offset)
    assert "leaf hash" in p.reason
    assert any("root hash does not match" in str(q) for q in report.problems)


def test_record_removed(log_dir, key):
    f = frames(log_dir)[23]
    splice(f.path, f.offset, f.length)
    p = first(verify_log(log_dir, key.public_key()))
    assert (p.index, p.segment, p.offset) == (23, f.path.name, f.offset)


def test_two_records_swapped(log_dir, key):
    fs = frames(log_dir)
    a, b = next((x, y) for x, y in zip(fs[10:], fs[11:]) if x.path == y.path)
    data = a.path.read_bytes()
    swapped = data[b.offset:b.offset + b.length] + data[a.offset:a.offset + a.length]
    splice(a.path, a.offset, a.length + b.length, swapped)
    p = first(verify_log(log_dir, key.public_key()))
    assert (p.index, p.segment, p.offset) == (a.index, a.path.name, a.offset)


def test_tail_cut(log_dir, key):
    f = frames(log_dir)[N - 3]
    f.path.write_bytes(f.path.read_bytes()[: f.offset])
    p = first(verify_log(log_dir, key.public_key()))
    assert (p.index, p.segment, p.offset) == (N - 3, f.path.name, f.offset)
    assert "tail was cut" in p.reason


def test_last_segment_deleted(log_dir, key):
    last = list_segments(log_dir / "segments")[-1]
    last.path.unlink()
    p = first(verify_log(log_dir, key.public_key()))
    assert p.index == last.first_index and "tail was cut" in p.reason


def test_middle_segment_deleted(log_dir, key):
    seg = list_segments(log_dir / "segments")[1]
    seg.path.unlink()
    p = first(verify_log(log_dir, key.public_key()))
    assert p.index == seg.first_index and "no checkpointed retention record" in p.reason


def test_checkpoints_resigned_over_a_different_tree_with_another_key(tmp_path, key):
    """An attacker rewrites record 5, rebuilds everything and signs with their own key."""
    genuine, forged = tmp_path / "genuine", tmp_path / "forged"
    fill(genuine, key, N)
    evil = generate_signing_key()
    with open_log(forged, evil, segment_max_bytes=2048, checkpoint_every=10) as log:
        for i in range(N):
            log.append(record(i, decision="block") if i == 5 else record(i))
            if i % 10 == 9:
                log.sync_now()
    # The stored keys came with the forgery, so only an independently held key can tell.
    assert verify_log(forged).ok
    report = verify_log(forged, key.public_key())
    p = first(report)
    assert "not validly signed by the given key" in p.reason
    assert p.index == 0
    # The genuine log still verifies with that key.
    assert verify_log(genuine, key.public_key()).ok


def test_checkpoint_forged_after_a_genuine_one_names_the_first_uncovered_record(log_dir, key):
    evil = generate_signing_key()
    path = log_dir / "checkpoints.log"
    entries, _, _ = parse_log(path.read_bytes())
    keep = entries[2]  # sizes: 0, 10, 20, 30, 40
    head = path.read_bytes()[: entries[3].offset]
    forged = []
    for e in entries[3:]:
        cp = e.checkpoint
        forged.append(Checkpoint(cp.origin, cp.size, bytes(32), cp.time).signed(evil).note() + "\n")
    path.write_bytes(head + "".join(forged).encode())
    (log_dir / "checkpoint-keys.pem").write_bytes(public_pem(key.public_key()) + public_pem(evil.public_key()))
    report = verify_log(log_dir, key.public_key())
    p = first(report)
    assert p.index == keep.checkpoint.size == 20
    assert "not validly signed" in p.reason


def test_checkpoint_root_that_does_not_match(log_dir, key):
    """Signed by the real key (say, a buggy signer) but over a root the records do not produce."""
    path = log_dir / "checkpoints.log"
    entries, _, _ = parse_log(path.read_bytes())
    target = entries[3]
    cp = target.checkpoint
    bad = Checkpoint(cp.origin, cp.size, bytes(reversed(cp.root)), cp.time).signed(key)
    data = path.read_bytes()
    end = entries[4].offset
    path.write_bytes(data[: target.offset] + (bad.note() + "\n").encode() + data[end:])
    report = verify_log(log_dir, key.public_key())
    p = first(report)
    assert p.index is None and p.checkpoint == 3 and p.size == cp.size
    assert "root hash does not match" in p.reason
    assert any("not consistent" in q.reason for q in report.problems)


def test_checkpoint_text_edited_breaks_its_signature(log_dir, key):
    path = log_dir / "checkpoints.log"
    entries, _, _ = parse_log(path.read_bytes())
    cp = entries[2].checkpoint
    text = path.read_text()
    path.write_text(text.replace(f"\n{cp.size}\n{base64.b64encode(cp.root).decode()}",
                                 f"\n{cp.size}\n{base64.b64encode(bytes(32)).decode()}", 1))
    report = verify_log(log_dir)
    assert any("not validly signed" in p.reason for p in report.problems)


def test_damaged_tree_file_alone_is_only_a_warning(log_dir, key):
    """The tree files are a cache: the records still match the signed roots, so the log verifies."""
    l0 = log_dir / "tree" / "L00"
    data = bytearray(l0.read_bytes())
    data[32 * 12] ^= 1
    l0.write_bytes(bytes(data))
    report = verify_log(log_dir, key.public_key())
    assert report.ok, report.summary()
    assert any("L00 is damaged at leaf 12" in w for w in report.warnings)
