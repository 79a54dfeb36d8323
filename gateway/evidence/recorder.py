"""The gateway's `Recorder` over the evidence log: decisions and control actions become leaves.

Each replica writes its own log (a CT-style log per writer): the first free slot under
the evidence directory, so a restarted replica continues its log and replicas sharing a
data folder never interleave. Checkpoint signing key: the configured one, or one made at
first start beside the data (the log also keeps every public key that signed it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gateway.config import Config, decode_key
from gateway.evidence.crypto import generate_signing_key, load_signing_key, write_keypair
from gateway.evidence.log import EvidenceLog
from gateway.evidence.records import action_record
from gateway.evidence.recovery import EvidenceLogError
from gateway.policy import Evidence

log = logging.getLogger("gateway.evidence")


class EvidenceRecorder:
    def __init__(self, config: Config, policy: Evidence) -> None:
        self.config = config
        self.policy = policy
        self.log: EvidenceLog | None = None
        self.directory: Path | None = None
        self.signing_key = None

    # lifecycle (blocking: run on a worker thread) -------------------------------------
    def open(self) -> None:
        ev = self.config.evidence
        base = ev.directory or self.config.data_dir / "evidence"
        base.mkdir(parents=True, exist_ok=True)
        signing = self.signing_key = self._signing_key()
        encryption = self._encryption_key()
        previous = {kid: decode_key(value) for kid, value in ev.previous_keys.items()}
        for slot in range(64):
            directory = base / f"replica-{slot}"
            try:
                self.log = EvidenceLog.open(
                    directory, signing_key=signing, encryption_key=encryption, key_id=ev.key_id,
                    decryption_keys=previous or None, fsync_interval=self.policy.fsync_interval,
                    checkpoint_every=self.policy.checkpoint_every, checkpoint_seconds=self.policy.checkpoint_interval,
                )
            except EvidenceLogError as exc:
                if "open in another process" in str(exc):
                    continue
                raise
            self.directory = directory
            log.info("evidence log open", extra={"directory": str(directory), "origin": self.log.origin,
                                                  "records": self.log.size, "encrypted": encryption is not None})
            return
        raise EvidenceLogError(f"every evidence slot under {base} is in use")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def _signing_key(self):
        ev = self.config.evidence
        if ev.signing_key is not None:
            return load_signing_key(ev.signing_key)
        private = self.config.data_dir / "evidence-signing.key"
        if not private.exists():
            write_keypair(generate_signing_key(), private, self.config.data_dir / "evidence-signing.pub")
            log.warning("made an evidence signing key at %s; keep a copy of %s where the log's writers cannot change it",
                        private, private.with_suffix(".pub"))
        return load_signing_key(private)

    def _encryption_key(self) -> bytes | None:
        ev = self.config.evidence
        if ev.encryption_key_file is not None:
            key = decode_key(ev.encryption_key_file.read_text())
            if key is None:
                raise EvidenceLogError(f"{ev.encryption_key_file}: expected 32 bytes as base64 or hex")
            return key
        return decode_key(ev.encryption_key) if ev.encryption_key else None

    # Recorder ---------------------------------------------------------------------
    async def decision(self, record: dict[str, Any], bodies: dict[str, bytes] | None = None) -> int | None:
        if self.log is None:
            raise EvidenceLogError("the evidence log is not open")
        return await self.log.submit(record, bodies)

    async def durable(self, index: int | None) -> None:
        if index is not None and self.log is not None:
            await self.log.wait_durable(index)

    async def action(self, kind: str, *, actor: str, reason: str, **details: Any) -> int | None:
        if self.log is None:
            raise EvidenceLogError("the evidence log is not open")
        return await self.log.submit(action_record(kind, actor, reason, details))
