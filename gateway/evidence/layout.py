"""The log directory's small fixed files: identity (log.json), the process lock, known public keys.

The whole directory (see docs/evidence.md):

    log.json            identity: log id, origin, format version
    segments/*.seg      framed records (the Merkle leaves)
    tree/Lkk            per-level subtree hashes (derived; rebuilt if behind)
    checkpoints.log     signed checkpoint notes, oldest first
    checkpoint-keys.pem public keys that have signed checkpoints here
    index.sqlite        find/select index (derived; rebuilt if behind)
    holds.json          legal holds and their history
    retention.json      segments removed by retention
    lock                held (flock) while a process has the log open
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .crypto import public_pem
from .errors import EvidenceLogCorrupt, EvidenceLogError, LogInUse
from .retention import fsync_dir, write_json_atomic

FORMAT = "oversight-gateway-evidence"


def acquire_lock(path: Path) -> int:
    """flock, so a second gateway process (or handle) cannot interleave appends; freed by the kernel on kill.

    Raises LogInUse when another process or handle holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogInUse(f"evidence log {path.parent} is open in another process or handle") from None
    return fd


def load_meta(d: Path, origin: str | None) -> dict:
    """log.json: the log's identity. Its origin names the log in every checkpoint and signature."""
    path = d / "log.json"
    if path.exists():
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise EvidenceLogError(f"{d} is not an evidence log ({path} has format {meta.get('format')!r})")
        if origin is not None and origin != meta["origin"]:
            raise EvidenceLogError(f"evidence log origin is {meta['origin']!r}, not {origin!r}")
        return meta
    if any(d.joinpath("segments").glob("*.seg")):
        raise EvidenceLogCorrupt(f"{path} is missing but segments exist")
    if origin is not None and (not origin.strip() or "\n" in origin or origin != origin.strip()):
        raise ValueError("an evidence log origin must be one line without surrounding spaces")
    log_id = uuid.uuid4().hex
    meta = {"format": FORMAT, "version": 1, "log_id": log_id, "created": time.time(),
            "origin": origin or f"oversight-gateway/evidence/{log_id}"}
    write_json_atomic(path, meta)
    return meta


def remember_public_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Keep every key that ever signed here, so `verify` without --key can check old checkpoints."""
    pem = public_pem(key.public_key())
    existing = path.read_bytes() if path.exists() else b""
    if pem not in existing:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(existing + pem)
            f.flush()
            os.fsync(f.fileno())  # an empty key file after a power cut would orphan every checkpoint
        os.replace(tmp, path)
        fsync_dir(path.parent)
