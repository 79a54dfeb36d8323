"""Replicas that start together on one data folder make one signing key between them, and each reads it whole."""

from __future__ import annotations

import threading

from gateway.evidence import load_signing_key, public_pem
from gateway.recording.evidence import _keypair_made_here


def test_replicas_starting_at_once_make_one_key_pair(tmp_path):
    private, public = tmp_path / "evidence-signing.key", tmp_path / "evidence-signing.pub"
    start = threading.Barrier(8)
    made: list[bool] = []
    keys: list[bytes] = []

    def replica() -> None:
        start.wait()
        made.append(_keypair_made_here(private, public))
        keys.append(public_pem(load_signing_key(private).public_key()))

    threads = [threading.Thread(target=replica) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == len(keys) == 8 and made.count(True) == 1  # every replica got a key, one made it
    assert len(set(keys)) == 1 and public.read_bytes() == keys[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence-signing.key", "evidence-signing.pub"]  # no leftovers
    assert private.stat().st_mode & 0o777 == 0o600


def test_a_key_that_exists_is_kept(tmp_path):
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    assert _keypair_made_here(private, public) is True
    before = private.read_bytes()
    assert _keypair_made_here(private, public) is False
    assert private.read_bytes() == before
