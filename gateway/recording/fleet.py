"""The fleet's evidence as one replica sees it: its own log, and every other slot of the evidence directory.

Each replica writes one log in a slot (`replica-N`) of the evidence directory. When that
directory is shared by the fleet (a volume every replica mounts; docs/evidence.md), any
replica reads the other slots with a `LogReader`, so it can answer for any request id,
export every log of a window and witness the others. A slot appears when its writer
first opens it; readers are opened lazily and follow their writer's checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.evidence import EvidenceLog, EvidenceLogError, LogInUse, LogReader, Witnessed, read_witnessed
from gateway.evidence.witness import WITNESS_KEYS, WITNESSED
from gateway.recording.evidence import EvidenceRecorder

log = logging.getLogger("gateway.evidence")

SLOT_GLOB = "replica-*"


@dataclass(frozen=True)
class Found:
    """Where a request's records are: a log (this replica's, or another's) and the leaf indexes in it."""

    log: EvidenceLog | LogReader
    indexes: list[int]
    own: bool


class FleetLogs:
    def __init__(self, evidence: EvidenceRecorder) -> None:
        self.evidence = evidence
        self._readers: dict[Path, LogReader] = {}
        self._lock = threading.Lock()
        self._slots: tuple[float, list[Path]] = (-1.0, [])  # when the directory was last listed, and what it held
        self._adopted: dict[Path, int] = {}  # slot -> its segments' size when this replica last closed it

    @property
    def own(self) -> EvidenceLog:
        if self.evidence.log is None:
            raise EvidenceLogError("the evidence log is not open")
        return self.evidence.log

    @property
    def signing_key(self):
        """The key that signs this replica's checkpoints, and the manifests of its exports."""
        return self.evidence.signing_key

    def others(self) -> list[LogReader]:
        """A reader of every other slot that holds a log, each refreshed to its writer's latest checkpoint.

        Blocking (reads files): call it from a worker thread.
        """
        readers = []
        for slot in self._other_slots():
            reader = self._reader(slot)
            if reader is not None:
                reader.refresh()
                readers.append(reader)
        return readers

    def _other_slots(self) -> list[Path]:
        """The other slots holding a log; the directory is listed again at most once a second."""
        listed_at, slots = self._slots
        if time.monotonic() - listed_at > 1.0:
            own = self.evidence.directory
            slots = [s for s in sorted(self.evidence.base.glob(SLOT_GLOB)) if s != own and (s / "log.json").is_file()]
            self._slots = (time.monotonic(), slots)
        return slots

    def _reader(self, slot: Path) -> LogReader | None:
        with self._lock:
            reader = self._readers.get(slot)
            if reader is None:
                encryption, previous = self.evidence.body_keys()
                key_id = self.evidence.config.key_id
                try:
                    reader = LogReader.open(slot, encryption_key=encryption, key_id=key_id, decryption_keys=previous)
                except (EvidenceLogError, OSError) as exc:
                    log.warning("cannot read the evidence log in %s: %s", slot, exc)
                    return None
                self._readers[slot] = reader
            return reader

    def adopt_orphans(self) -> list[str]:
        """Open, recover and checkpoint every other log whose writer is gone and that changed since (blocking).

        A replica killed between two checkpoints leaves records that it answered for but that
        no signed checkpoint covers yet. Its slot is unlocked once it is gone; opening the
        log there (with this replica's key: the log keeps every key that signed it) recovers
        it exactly as its own restart would, and closing it signs a checkpoint over every
        record. Returns the origins of the logs adopted.
        """
        adopted = []
        for reader in self.others():
            slot = reader.directory
            try:
                if reader.writer_alive() or self._adopted.get(slot) == reader.stored_bytes():
                    continue
                encryption, previous = self.evidence.body_keys()
                log_ = EvidenceLog.open(slot, signing_key=self.signing_key, encryption_key=encryption,
                                        key_id=self.evidence.config.key_id, decryption_keys=previous or None)
                log_.close()
            except LogInUse:
                continue  # its writer came back, or another replica is adopting it right now
            except (EvidenceLogError, OSError) as exc:  # damaged: `gateway evidence verify` says where
                log.warning("cannot adopt the evidence log in %s: %s", slot, exc)
                continue
            self._adopted[slot] = reader.stored_bytes()
            reader.refresh()
            adopted.append(reader.origin)
        return adopted

    def find(self, request_id: str) -> list[Found]:
        """Every log holding records of `request_id`: this replica's first. Blocking."""
        found = []
        own = self.own.find(request_id)
        if own:
            found.append(Found(self.own, own, True))
        for reader in self.others():
            try:
                indexes = reader.find(request_id)
            except (OSError, EvidenceLogError, FileNotFoundError) as exc:
                log.warning("cannot search the evidence log %s: %s", reader.origin, exc)
                continue
            if indexes:
                found.append(Found(reader, indexes, False))
        return found

    def pending(self, request_id: str) -> bool:
        """True when another log holds records of `request_id` its writer has not yet covered by a checkpoint."""
        for reader in self.others():
            try:
                if any(True for _ in reader.find_uncovered(request_id)):
                    return True
            except (OSError, EvidenceLogError):
                continue
        return False

    async def wait_covered(self, request_id: str, timeout: float) -> list[Found]:
        """`find`, waiting up to `timeout` for other writers to checkpoint records they hold but do not yet prove."""
        deadline = time.monotonic() + timeout
        while True:
            found = await asyncio.to_thread(self.find, request_id)
            if found or time.monotonic() >= deadline or not await asyncio.to_thread(self.pending, request_id):
                return found
            await asyncio.sleep(0.1)

    def cosigned(self, origin: str) -> list[Witnessed]:
        """Every witness's cosigned checkpoints of the log `origin`, from each slot's witnessed file. Blocking."""
        out = []
        for slot in sorted(self.evidence.base.glob(SLOT_GLOB)):
            out.extend(w for o, w in read_witnessed(slot / WITNESSED) if o == origin)
        return out

    def witness_keys(self) -> bytes:
        """The PEM public keys of every slot's witness (published beside its witnessed file). Blocking."""
        return b"".join(sorted({p.read_bytes() for p in self.evidence.base.glob(f"{SLOT_GLOB}/{WITNESS_KEYS}")}))

    def close(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
