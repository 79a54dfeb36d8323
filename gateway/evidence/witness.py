"""`Witness`: check other logs' new checkpoints against what was seen before, and cosign them.

Each writer of a fleet witnesses the others. For every log it follows, a witness keeps
the last checkpoint it cosigned; a newer checkpoint is cosigned only if the log proves it
an extension of that one (RFC 9162 consistency proof from the log's own tree). A log
that shrank, forked at the same size or cannot prove consistency was rewritten since
the witness saw it, whoever signed it: the witness reports it and never cosigns it.

A witness's cosigned notes go to `witnessed.jsonl` in its own log's directory (one JSON
object per line: origin, note), fsynced, so that exports by any replica can carry them
and a restarted witness resumes where it left off; its public keys (every key it has
cosigned with) to `witness-keys.pem` beside it. The first checkpoint of a log a
witness sees is taken on trust (as any witness must start somewhere).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .checkpoints import Checkpoint
from .cosignature import Witnessed, cosign, parse_witnessed, witness_name
from .errors import CheckpointError
from .layout import remember_public_key
from .merkle import verify_consistency

WITNESSED = "witnessed.jsonl"
WITNESS_KEYS = "witness-keys.pem"


class WitnessedLog(Protocol):
    """What a witness reads of a log: a `LogReader` (or an open `EvidenceLog`)."""

    origin: str

    def refresh(self) -> Checkpoint | None: ...
    def checkpoint_keys(self) -> list[Ed25519PublicKey]: ...
    def consistency_proof(self, m: int, n: int) -> list[bytes]: ...


@dataclass(frozen=True)
class Observation:
    origin: str
    checkpoint: Checkpoint | None
    outcome: str  # "cosigned", "unchanged", "no checkpoint", "unsigned", "inconsistent"
    reason: str = ""


def read_witnessed(path: Path) -> list[tuple[str, Witnessed]]:
    """The (origin, cosigned note) entries of a `witnessed.jsonl`; a torn or damaged line is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
            out.append((entry["origin"], parse_witnessed(entry["note"])))
        except (ValueError, KeyError, TypeError, CheckpointError):
            continue
    return out


class Witness:
    def __init__(self, key: Ed25519PrivateKey, directory: Path) -> None:
        self.key = key
        self.name = witness_name(key.public_key())
        self.path = Path(directory) / WITNESSED
        remember_public_key(Path(directory) / WITNESS_KEYS, key)
        self._seen: dict[str, Checkpoint] = {}
        for origin, witnessed in read_witnessed(self.path):
            if witnessed.cosignatures and any(c.name == self.name for c in witnessed.cosignatures):
                self._seen[origin] = witnessed.checkpoint

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def last_cosigned(self, origin: str) -> Checkpoint | None:
        return self._seen.get(origin)

    def observe(self, log: WitnessedLog) -> Observation:
        """Look at the log's latest checkpoint; cosign it if it extends what this witness cosigned before."""
        cp = log.refresh()
        if cp is None:
            return Observation(log.origin, None, "no checkpoint")
        before = self._seen.get(log.origin)
        if before == cp:
            return Observation(log.origin, cp, "unchanged")
        if cp.origin != log.origin:
            return Observation(log.origin, cp, "inconsistent", f"the checkpoint names origin {cp.origin!r}")
        if not cp.verified_by(log.checkpoint_keys()):
            return Observation(log.origin, cp, "unsigned", "not signed by a key in the log's checkpoint-keys.pem")
        if before is not None:
            problem = _inconsistency(log, before, cp)
            if problem:
                return Observation(log.origin, cp, "inconsistent", problem)
        witnessed = Witnessed(cp, (cosign(cp, self.key, self.name, int(time.time())),))
        self._append({"origin": log.origin, "note": witnessed.note()})
        self._seen[log.origin] = cp
        return Observation(log.origin, cp, "cosigned")

    def _append(self, entry: dict) -> None:
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)


def _inconsistency(log: WitnessedLog, before: Checkpoint, cp: Checkpoint) -> str:
    """Why `cp` is not an extension of `before` in this log, or "" when it is."""
    if cp.size < before.size:
        return f"the log shrank from size {before.size} (cosigned) to {cp.size}"
    if cp.size == before.size:
        return "" if cp.root == before.root else f"a different root at the cosigned size {cp.size} (a fork)"
    if before.size == 0:
        return ""
    try:
        proof = log.consistency_proof(before.size, cp.size)
    except (ValueError, LookupError, OSError) as exc:
        return f"the log cannot prove size {cp.size} consistent with the cosigned size {before.size} ({exc})"
    if not verify_consistency(before.size, cp.size, before.root, cp.root, proof):
        return f"size {cp.size} is not consistent with the cosigned size {before.size}: the log was rewritten"
    return ""
