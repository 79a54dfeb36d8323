"""Bodies at rest: AES-256-GCM, no plaintext on disk, key ids per segment, rotation."""

from __future__ import annotations

import base64
import json
import os

import pytest

from gateway.evidence import verify_log
from gateway.evidence.crypto import default_key_id
from gateway.evidence.segments import SegmentReader, list_segments

from .helpers import all_bytes, open_log, record

SECRET = b"PROMPT: the launch code is 0000-SWORDFISH-7731"
ANSWER = b"COMPLETION: I cannot share the launch code SWORDFISH"


def segment_key_ids(directory) -> list[str | None]:
    out = []
    for seg in list_segments(directory / "segments"):
        with SegmentReader(seg.path) as r:
            out.append(r.header.key_id)
    return out


def test_no_body_plaintext_anywhere_on_disk_and_readable_with_the_key(tmp_path, key):
    k = os.urandom(32)
    with open_log(tmp_path, key, encryption_key=k, key_id="k1") as log:
        for i in range(30):
            log.append(record(i), {"request": SECRET + b" #%d" % i, "response": ANSWER})
        log.sync_now()
        assert log.get(7)["bodies"] == {"request": SECRET + b" #7", "response": ANSWER}
    blob = all_bytes(tmp_path)
    for needle in (b"SWORDFISH", b"launch code", base64.b64encode(SECRET)[:24], base64.b64encode(ANSWER)[:24]):
        assert needle not in blob
    with open_log(tmp_path, key, encryption_key=k, key_id="k1") as log:
        assert log.get(29)["bodies"]["request"] == SECRET + b" #29"
    assert verify_log(tmp_path).ok  # verification needs no decryption key


def test_without_a_key_bodies_are_plain_base64(tmp_path, key):
    with open_log(tmp_path, key) as log:
        log.append(record(0), {"request": SECRET})
        stored = json.loads(log.read_leaf(0))
        assert stored["bodies"] == {"request": {"b64": base64.b64encode(SECRET).decode()}}
        assert log.get(0)["bodies"]["request"] == SECRET


def test_key_rotation_new_segment_new_key_id_old_still_readable(tmp_path, key):
    old, new = os.urandom(32), os.urandom(32)
    with open_log(tmp_path, key, encryption_key=old, key_id="2024-01") as log:
        log.append(record(0), {"request": b"old body"})
        kid = log.rotate_key(new, "2024-02")
        assert kid == "2024-02"
        log.append(record(1), {"request": b"new body"})
        assert log.get(0)["bodies"]["request"] == b"old body"
        assert log.get(1)["bodies"]["request"] == b"new body"
    assert segment_key_ids(tmp_path) == ["2024-01", "2024-02"]
    assert json.loads(open_log_read_leaf(tmp_path, key, 1))["bodies"]["request"]["kid"] == "2024-02"

    # Reopen with a third key: it applies to a new segment; the old ones read with their keys.
    third = os.urandom(32)
    with open_log(tmp_path, key, encryption_key=third, key_id=None,
                  decryption_keys={"2024-01": old, "2024-02": new}) as log:
        log.append(record(2), {"request": b"third body"})
        assert [log.get(i)["bodies"]["request"] for i in range(3)] == [b"old body", b"new body", b"third body"]
    assert segment_key_ids(tmp_path) == ["2024-01", "2024-02", default_key_id(third)]

    # Without the old keys those bodies stay sealed envelopes; nothing else breaks.
    with open_log(tmp_path, key, encryption_key=third, key_id=None) as log:
        env = log.get(0)["bodies"]["request"]
        assert isinstance(env, dict) and env["kid"] == "2024-01" and env["alg"] == "A256GCM"
        assert log.get(2)["bodies"]["request"] == b"third body"
    assert verify_log(tmp_path).ok


def open_log_read_leaf(directory, key, idx) -> bytes:
    with open_log(directory, key, encryption_key=None, key_id=None) as log:
        return log.read_leaf(idx)


def test_ciphertext_moved_to_another_record_does_not_decrypt(tmp_path, key):
    k = os.urandom(32)
    with open_log(tmp_path, key, encryption_key=k, key_id="k") as log:
        log.append(record(0), {"request": b"zero"})
        env = json.loads(log.read_leaf(0))["bodies"]
        log.append(record(1, bodies=env))  # replayed envelope, now under leaf 1
        with pytest.raises(ValueError, match="does not decrypt"):
            log.get(1)


def test_bad_key_length_is_refused(tmp_path, key):
    with pytest.raises(ValueError, match="32 bytes"):
        open_log(tmp_path, key, encryption_key=b"short", key_id="x")


def test_every_body_gets_its_own_nonce(tmp_path, key):
    with open_log(tmp_path, key, encryption_key=os.urandom(32), key_id="k") as log:
        for i in range(400):  # more than one 4 KiB nonce pool
            log.append(record(i), {"a": b"x", "b": b"x"})
        ivs = [env["iv"] for i in range(400) for env in json.loads(log.read_leaf(i))["bodies"].values()]
        cts = {env["ct"] for i in range(400) for env in json.loads(log.read_leaf(i))["bodies"].values()}
    assert len(set(ivs)) == len(ivs) == 800
    assert len(cts) == 800  # same plaintext, same key: still 800 different ciphertexts
