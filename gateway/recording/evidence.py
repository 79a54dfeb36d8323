"""The gateway's `Recorder` over the evidence log: decisions and control actions become leaves.

Each replica writes its own log (a CT-style log per writer): the first free slot under
the evidence directory, so a restarted replica continues its log and replicas sharing a
data folder never interleave. Checkpoint signing key: the configured one, or one made at
first start beside the data (the log also keeps every public key that signed it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from gateway.config import EvidenceConfig, decode_key
from gateway.evidence import EvidenceLog, EvidenceLogError, LogInUse, generate_signing_key, load_signing_key, write_keypair
from gateway.ids import random_hex
from gateway.policy import Evidence

log = logging.getLogger("gateway.evidence")

SLOTS = 64


def action_record(kind: str, actor: str, reason: str, details: dict[str, Any]) -> dict[str, Any]:
    """A control action: a level change, a kill, a switch, a review decision, a verification."""
    return {"kind": "action", "action": kind, "time": time.time(), "actor": actor, "reason": reason,
            **{k: v for k, v in details.items() if v is not None}}


class EvidenceRecorder:
    def __init__(self, config: EvidenceConfig, policy: Evidence, *, data_dir: Path) -> None:
        self.config = config
        self.policy = policy
        self.data_dir = data_dir
        self.log: EvidenceLog | None = None
        self.base: Path = config.directory or data_dir / "evidence"  # every replica's slot, when it is shared
        self.directory: Path | None = None
        self.signing_key = None

    # lifecycle (blocking: run on a worker thread) -------------------------------------
    def open(self) -> None:
        ev = self.config
        base = self.base
        base.mkdir(parents=True, exist_ok=True)
        signing = self.signing_key = self._signing_key()
        encryption, previous = self.body_keys()
        for slot in range(SLOTS):
            directory = base / f"replica-{slot}"
            try:
                self.log = EvidenceLog.open(
                    directory, signing_key=signing, encryption_key=encryption, key_id=ev.key_id,
                    decryption_keys=previous or None, fsync_interval=self.policy.fsync_interval,
                    checkpoint_every=self.policy.checkpoint_every, checkpoint_seconds=self.policy.checkpoint_interval,
                )
            except LogInUse:
                continue  # another replica on this data folder writes that slot
            self.directory = directory
            log.info("evidence log open", extra={"directory": str(directory), "origin": self.log.origin,
                                                  "records": self.log.size, "encrypted": encryption is not None})
            return
        raise EvidenceLogError(f"every evidence slot under {base} is in use")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    async def retain_forever(self) -> None:
        """Apply the retention at start and then hourly: whole segments, never a held one."""
        while True:
            try:
                removed = await asyncio.to_thread(self._log().apply_retention, time.time(), self.policy.retention)
                if removed:
                    log.info("evidence retention removed %d segment(s)", len(removed))
            except Exception:
                log.exception("evidence retention failed")
            await asyncio.sleep(3600)

    def set_legal_hold(self, hold_id: str, since: float | None, until: float | None, reason: str, actor: str) -> int:
        """Keep the records of a window past retention (blocking: run on a worker thread)."""
        return self._log().set_legal_hold(hold_id, since, until, reason, actor)

    def _log(self) -> EvidenceLog:
        if self.log is None:
            raise EvidenceLogError("the evidence log is not open")
        return self.log

    def _signing_key(self):
        ev = self.config
        if ev.signing_key is not None:
            return load_signing_key(ev.signing_key)
        private = self.data_dir / "evidence-signing.key"
        if _keypair_made_here(private, self.data_dir / "evidence-signing.pub"):
            log.warning("made an evidence signing key at %s; keep a copy of %s where the log's writers cannot change it",
                        private, private.with_suffix(".pub"))
        return load_signing_key(private)

    def body_keys(self) -> tuple[bytes | None, dict[str, bytes]]:
        """The key that seals bodies now, and the earlier ones by key id (to open older records)."""
        previous = {kid: key for kid, value in self.config.previous_keys.items() if (key := decode_key(value)) is not None}
        return self._encryption_key(), previous

    def witness_key(self):
        """This replica's witness key (it cosigns the other replicas' logs), made at first start beside the data."""
        private = self.data_dir / "evidence-witness.key"
        _keypair_made_here(private, self.data_dir / "evidence-witness.pub")
        return load_signing_key(private)

    def _encryption_key(self) -> bytes | None:
        ev = self.config
        if ev.encryption_key_file is not None:
            key = decode_key(ev.encryption_key_file.read_text())
            if key is None:
                raise EvidenceLogError(f"{ev.encryption_key_file}: expected 32 bytes as base64 or hex")
            return key
        return decode_key(ev.encryption_key) if ev.encryption_key else None

    # Recorder ---------------------------------------------------------------------
    async def decision(self, record: dict[str, Any], bodies: dict[str, bytes] | None = None) -> int | None:
        return await self._log().submit(record, bodies)

    async def durable(self, index: int | None) -> None:
        if index is not None and self.log is not None:
            await self.log.wait_durable(index)

    async def action(self, kind: str, *, actor: str, reason: str, **details: Any) -> int | None:
        return await self._log().submit(action_record(kind, actor, reason, details))


def _keypair_made_here(private: Path, public: Path) -> bool:
    """Make a key pair at first start, unless a replica sharing the data folder has made it: True when made here.

    Replicas of one machine start together on one folder; the first to link its key into
    place wins and the others read that key, whole (it is written before it is linked).
    """
    if private.exists():
        return False
    staged = private.with_name(f".{private.name}.{os.getpid()}.{random_hex(6)}")
    staged_public = staged.with_name(staged.name + ".pub")
    write_keypair(generate_signing_key(), staged, staged_public, force=True)
    try:
        os.link(staged, private)
    except FileExistsError:
        return False
    else:
        os.replace(staged_public, public)
        return True
    finally:
        staged.unlink(missing_ok=True)
        staged_public.unlink(missing_ok=True)
