"""EvidenceLog behaviour on real files: append/read, durability, checkpoints, proofs, rebuilds."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import time

import pytest

from gateway.evidence import EvidenceLogCorrupt, EvidenceLogError, canonical, verify_log
from gateway.evidence.checkpoints import parse_note
from gateway.evidence.merkle import leaf_hash, mth, verify_consistency, verify_inclusion
from gateway.evidence.segments import frame, list_segments

from .helpers import fill, frames, open_log, record


def test_append_returns_consecutive_indexes_and_get_returns_the_record(tmp_path, key):
    with open_log(tmp_path, key) as log:
        idxs = [log.append(record(i)) for i in range(5)]
        assert idxs == [0, 1, 2, 3, 4]
        assert log.get(3) == record(3)
        with pytest.raises(IndexError):
            log.get(5)


def test_leaf_is_the_canonical_record_bytes(tmp_path, key):
    rec = {"z": 1, "a": "é", "m": [1, 2.5, None]}
    with open_log(tmp_path, key) as log:
        log.append(rec)
        assert log.read_leaf(0) == b'{"a":"\xc3\xa9","m":[1,2.5,null],"z":1}' == canonical(rec)
        assert log.root() == mth([canonical(rec)])
        log.append({"x": float("nan")})  # JSON has no NaN: recorded as null rather than lost
        assert log.read_leaf(1) == b'{"x":null}'
        with pytest.raises(ValueError):
            log.append({"x": object()})
        assert log.size == 2


def test_find_and_select_cover_indexed_and_pending_records(tmp_path, key):
    with open_log(tmp_path, key, fsync_interval=30) as log:
        for i in range(20):
            log.append(record(i, request_id=f"req-{i % 3}"))
        assert log.find("req-1") == [1, 4, 7, 10, 13, 16, 19]  # still pending: not in SQLite yet
        log.sync_now()
        assert log.find("req-1") == [1, 4, 7, 10, 13, 16, 19]
        log.append(record(20, request_id="req-1"))
        assert log.find("req-1")[-1] == 20
        t0 = 1_700_000_000.0
        assert list(log.select(since=t0 + 5, until=t0 + 9)) == [5, 6, 7, 8]
        assert list(log.select(since=t0 + 5, until=t0 + 9, model="m-a")) == [5, 7]
        assert list(log.select(model="m-b"))[:3] == [0, 2, 4]
        assert log.find("nope") == []


def test_index_is_rebuilt_when_deleted(tmp_path, key):
    fill(tmp_path, key, 30)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with open_log(tmp_path, key) as log:
        assert log.find("req-17") == [17]
        assert log.get(17)["n"] == 17
        assert list(log.select(since=1_700_000_028.0)) == [28, 29]


async def test_wait_durable_forces_an_early_group_fsync(tmp_path, key):
    log = open_log(tmp_path, key, fsync_interval=60)
    try:
        idx = log.append(record(0))
        assert log.durable_size == 0
        t = time.monotonic()
        await asyncio.wait_for(log.wait_durable(idx), 5)
        assert time.monotonic() - t < 5
        assert log.durable_size == 1
        await log.wait_durable(idx)  # already durable: returns at once
        with pytest.raises(ValueError):
            await log.wait_durable(7)
    finally:
        log.close()


async def test_background_thread_syncs_without_being_asked(tmp_path, key):
    with open_log(tmp_path, key, fsync_interval=0.01) as log:
        log.append(record(0))
        for _ in range(200):
            if log.durable_size == 1:
                break
            await asyncio.sleep(0.01)
        assert log.durable_size == 1


def test_checkpoints_are_signed_c2sp_notes_covering_the_tree(tmp_path, key):
    with open_log(tmp_path, key, checkpoint_every=5) as log:
        leaves = []
        for i in range(12):
            leaves.append(canonical(record(i)))
            log.append(record(i))
            if i % 5 == 4:
                log.sync_now()
    cps = log.checkpoints()
    assert [c.size for c in cps] == [0, 5, 10, 12]
    pub = key.public_key()
    for cp in cps:
        assert cp.root == mth(leaves[: cp.size])
        assert cp.verified_by([pub])
        assert parse_note(cp.note()) == cp
    note = cps[-1].note()
    lines = note.split("\n")
    assert lines[0] == log.origin and lines[1] == "12" and base64.b64decode(lines[2]) == cps[-1].root
    assert lines[5].startswith("\u2014 " + log.origin + " ")
    assert log.latest_checkpoint() == cps[-1]


def test_time_based_checkpoint(tmp_path, key):
    with open_log(tmp_path, key, checkpoint_every=10_000, checkpoint_seconds=0.05, fsync_interval=0.01) as log:
        log.append(record(0))
        deadline = time.monotonic() + 5
        while log.latest_checkpoint().size < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.latest_checkpoint().size == 1


def test_proofs_from_the_log_verify_against_its_checkpoints(tmp_path, key):
    with open_log(tmp_path, key, checkpoint_every=7) as log:
        for i in range(50):
            log.append(record(i))
            if i % 7 == 6:
                log.sync_now()
        log.sync_now()
        cps = [c for c in log.checkpoints() if c.size]
        for a, b in zip(cps, cps[1:]):
            assert verify_consistency(a.size, b.size, a.root, b.root, log.consistency_proof(a.size, b.size))
        last = cps[-1]
        for idx in (0, 13, last.size - 1):
            proof = log.inclusion_proof(idx, last.size)
            assert verify_inclusion(leaf_hash(log.read_leaf(idx)), idx, last.size, proof, last.root)


def test_tree_is_rebuilt_from_segments_when_missing(tmp_path, key):
    fill(tmp_path, key, 45)
    root = verify_log(tmp_path).latest.root
    shutil.rmtree(tmp_path / "tree")
    with open_log(tmp_path, key) as log:
        assert log.root(45) == root
        assert verify_inclusion(leaf_hash(log.read_leaf(44)), 44, 45, log.inclusion_proof(44, 45), root)
    assert verify_log(tmp_path).ok


def test_tree_behind_the_segments_catches_up_at_open(tmp_path, key):
    fill(tmp_path, key, 45)
    for level_file in (tmp_path / "tree").iterdir():
        level_file.write_bytes(level_file.read_bytes()[: len(level_file.read_bytes()) // 2])
    with open_log(tmp_path, key) as log:
        assert log.size == 45
        log.append(record(45))
    assert verify_log(tmp_path).ok


def test_segments_rotate_at_the_size_limit(tmp_path, key):
    fill(tmp_path, key, 40, segment_max_bytes=1024)
    segs = list_segments(tmp_path / "segments")
    assert len(segs) >= 4
    assert all(s.path.stat().st_size <= 1024 for s in segs[:-1])
    with open_log(tmp_path, key) as log:
        assert [log.get(i)["n"] for i in range(40)] == list(range(40))


def test_a_second_open_of_the_same_directory_is_refused(tmp_path, key):
    with open_log(tmp_path, key):
        with pytest.raises(EvidenceLogError, match="open in another"):
            open_log(tmp_path, key)


def test_append_after_close_raises(tmp_path, key):
    log = open_log(tmp_path, key)
    log.close()
    log.close()
    with pytest.raises(EvidenceLogError):
        log.append(record(0))


def test_torn_tail_is_cut_with_a_warning_and_the_log_continues(tmp_path, key, caplog):
    fill(tmp_path, key, 25)
    last = list_segments(tmp_path / "segments")[-1].path
    size_before = last.stat().st_size
    with open(last, "ab") as fh:
        fh.write(frame(b'{"kind":"decision","n":25,"padding":"' + b"x" * 200 + b'"}')[:57])
    with caplog.at_level(logging.WARNING, logger="gateway.evidence"):
        log = open_log(tmp_path, key)
    try:
        assert any("torn" in r.message for r in caplog.records if r.levelno == logging.WARNING)
        assert last.stat().st_size == size_before
        assert log.size == 25
        assert log.append(record(25)) == 25
        assert log.get(25)["n"] == 25
    finally:
        log.close()
    report = verify_log(tmp_path, key.public_key())
    assert report.ok, report.summary()
    assert report.records == 26


def test_zero_filled_tail_after_power_loss_is_cut(tmp_path, key, caplog):
    fill(tmp_path, key, 12)
    last = list_segments(tmp_path / "segments")[-1].path
    with open(last, "ab") as fh:
        fh.write(bytes(300))
    with caplog.at_level(logging.WARNING, logger="gateway.evidence"), open_log(tmp_path, key) as log:
        assert log.size == 12
    assert any("torn" in r.message for r in caplog.records)
    assert verify_log(tmp_path).ok


def test_an_incomplete_record_that_was_acknowledged_is_not_cut(tmp_path, key):
    """Damage inside the checkpointed log must stay for verify to report, not be 'repaired'."""
    fill(tmp_path, key, 25)
    f = frames(tmp_path)[-1]
    data = f.path.read_bytes()
    f.path.write_bytes(data[: f.offset + 20])
    with pytest.raises(EvidenceLogCorrupt, match="record 24"):
        open_log(tmp_path, key)
    assert f.path.stat().st_size == f.offset + 20


def test_a_corrupt_record_in_the_middle_is_kept(tmp_path, key, caplog):
    fill(tmp_path, key, 25)
    f = frames(tmp_path)[-3]
    data = bytearray(f.path.read_bytes())
    data[f.offset + 8 + 5] ^= 0x01
    f.path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="gateway.evidence"), open_log(tmp_path, key) as log:
        assert log.size == 25
    assert any("checksum" in r.message for r in caplog.records)
    assert f.path.read_bytes() == bytes(data)
    report = verify_log(tmp_path)
    assert not report.ok and report.first_problem.index == f.index


def test_torn_checkpoint_note_is_cut_at_open(tmp_path, key, caplog):
    fill(tmp_path, key, 15)
    path = tmp_path / "checkpoints.log"
    good = path.read_bytes()
    path.write_bytes(good + good[: good.index(b"\n\n") + 10])  # a note cut inside its signature line
    with caplog.at_level(logging.WARNING, logger="gateway.evidence"), open_log(tmp_path, key) as log:
        assert log.latest_checkpoint().size == 15
    assert any("torn checkpoint" in r.message for r in caplog.records)
    assert path.read_bytes() == good
    assert verify_log(tmp_path, key.public_key()).ok


def test_damaged_checkpoint_log_refuses_to_open(tmp_path, key):
    fill(tmp_path, key, 15)
    path = tmp_path / "checkpoints.log"
    dash = "\u2014".encode()
    path.write_bytes(path.read_bytes().replace(b"\n\n" + dash, b"\nX\n" + dash, 1))
    with pytest.raises(EvidenceLogCorrupt, match="checkpoints.log"):
        open_log(tmp_path, key)


async def test_submitted_records_are_written_in_order_without_blocking_the_loop(tmp_path, key):
    with open_log(tmp_path, key, segment_max_bytes=4096) as log:
        log.append(record(0))
        futures = [log.submit(record(i), {"request": b"body %d" % i} if i % 2 else None) for i in range(1, 200)]
        indexes = await asyncio.gather(*futures)
        assert indexes == list(range(1, 200))  # the order they were submitted in
        assert log.size == 200 and len(list_segments(tmp_path / "segments")) > 1  # batches cross segment rotations
        for i in (1, 2, 199):
            assert log.get(i)["request_id"] == record(i)["request_id"]
        assert log.get(199)["bodies"] == {"request": b"body 199"}
        bad = log.submit({"x": object()})
        good = log.submit(record(200))
        with pytest.raises(ValueError):
            await bad  # one record that cannot be encoded fails alone
        assert await good == 200
    assert verify_log(tmp_path).ok


async def test_submitting_to_a_closed_log_fails_clearly(tmp_path, key):
    log = open_log(tmp_path, key)
    pending = log.submit(record(0))
    log.close()  # what was submitted before close is written
    assert await pending == 0
    with pytest.raises(EvidenceLogError):
        log.submit(record(1))
