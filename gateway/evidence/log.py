"""`EvidenceLog`: the append-only, tamper-evident evidence store.

The request path calls `append` (or `submit`, from an event loop), which only
encodes, (optionally) encrypts, frames and `os.write`s the record and folds its
leaf hash into an in-memory frontier. Everything slow happens on one background
thread every `fsync_interval`: a group fdatasync, then (for what that fsync made
durable only) the tree hash files and the SQLite index, then a signed checkpoint
when one is due. Callers that must not answer before the record is on disk await
`wait_durable`. The directory's files are listed in `layout`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from hashlib import sha256
from pathlib import Path
from typing import Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import recovery
from .canonical_json import canonical
from .checkpoints import Checkpoint, CheckpointLog, read_log
from .crypto import BodyCipher
from .errors import EvidenceLogError
from .index import Index, Row, row_for
from .layout import acquire_lock, load_meta, remember_public_key
from .loop_bridge import DurableSize, Submissions
from .merkle import Frontier, decompose
from .retention import HoldStore, RetentionManifest, expired_segments, fsync_dir, merge_ranges
from .segments import ActiveSegment, frame, list_segments, pread_record, segment_name
from .tree import TreeFiles

logger = logging.getLogger("gateway.evidence")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class EvidenceLog:
    """Use `EvidenceLog.open(...)`; see the module docstring for the threading model."""

    def __init__(self) -> None:  # pragma: no cover - use open()
        raise TypeError("use EvidenceLog.open(directory, ...)")

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        signing_key: Ed25519PrivateKey | None = None,
        encryption_key: bytes | None = None,
        key_id: str | None = None,
        decryption_keys: Mapping[str, bytes] | None = None,
        fsync_interval: float = 0.05,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 10.0,
        segment_max_bytes: int = DEFAULT_SEGMENT_BYTES,
        origin: str | None = None,
    ) -> "EvidenceLog":
        """Open (creating if needed) the log in `directory`, repairing crash leftovers.

        `decryption_keys` (key id -> key) keeps bodies in segments written under
        earlier keys readable after `encryption_key` has been rotated.
        Raises EvidenceLogCorrupt on damage that is not a crash artifact.
        """
        self = object.__new__(cls)
        self._init(Path(directory), signing_key, BodyCipher(encryption_key, key_id, decryption_keys),
                   fsync_interval, checkpoint_every, checkpoint_seconds, segment_max_bytes, origin)
        return self

    def _init(self, d: Path, signing_key: Ed25519PrivateKey | None, cipher: BodyCipher, fsync_interval: float,
              checkpoint_every: int, checkpoint_seconds: float, segment_max_bytes: int, origin: str | None) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.directory = d
        self._init_sync_state()
        self._lock_fd = acquire_lock(d / "lock")
        try:
            self._meta = load_meta(d, origin)
            self.origin: str = self._meta["origin"]
            self._signing_key = signing_key
            self._cipher = cipher
            self._interval = fsync_interval
            self._cp_every = max(1, checkpoint_every)
            self._cp_seconds = checkpoint_seconds
            self._seg_max = segment_max_bytes
            self._segdir = d / "segments"
            self._segdir.mkdir(exist_ok=True)
            if signing_key is not None:
                remember_public_key(d / "checkpoint-keys.pem", signing_key)
            self._recover()
        except BaseException:
            for part in ("_tree_files", "_index", "_cplog"):
                if hasattr(self, part):
                    getattr(self, part).close()
            os.close(self._lock_fd)
            raise
        self._thread = threading.Thread(target=self._run, name="evidence-fsync", daemon=True)
        self._thread.start()
        self._submissions.start()

    def _recover(self) -> None:
        d = self.directory
        self._tree_files = TreeFiles(d / "tree")
        self._index = Index(d / "index.sqlite")
        self._holds = HoldStore(d / "holds.json")
        self._retention = RetentionManifest(d / "retention.json")
        state = recovery.recover(d, self._segdir, self._tree_files, self._index)
        self._cplog = CheckpointLog(d / "checkpoints.log")
        self._last_cp: Checkpoint | None = state.checkpoint
        self._tree = state.tree
        self._size = state.size
        self._durable.advance(state.size)
        self._rows: list[Row] = []
        self._read_fds: dict[int, int] = {}
        segment = self._segment = ActiveSegment(self._segdir, self._meta["log_id"])
        tail = state.tail
        if tail is not None:
            segment.adopt(tail.segment.first_index, tail.records, tail.end_offset)
        if tail is None or tail.key_id != self._cipher.key_id or tail.end_offset >= self._seg_max:
            segment.rotate(self._size, self._cipher.key_id)  # a key change or a full segment: a new one
        else:
            segment.reopen()
        self._tree_files.fsync()
        if self._last_cp is None:
            self._write_checkpoint(self._size, self._tree.root())

    def _init_sync_state(self) -> None:
        self._submissions = Submissions(self._write_submitted)
        self._durable = DurableSize()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False
        self._failed: BaseException | None = None
        self._last_cp_mono = time.monotonic()

    # ---------------------------------------------------------------- hot path

    def submit(self, record: dict, bodies: dict[str, bytes] | None = None) -> "asyncio.Future[int]":
        """Append from an event loop without blocking it: resolves to the leaf index once the OS has the record.

        Everything the loop submits in one iteration is encoded and handed to the OS in one
        write at the end of that iteration (see `loop_bridge.Submissions`).
        """
        if not isinstance(record, dict):
            raise TypeError("an evidence record must be a dict")
        self._check_open()
        return self._submissions.submit(record, bodies)

    def _write_submitted(self, batch: list[tuple[dict, dict[str, bytes] | None]]) -> list[int | Exception]:
        """Append a batch in one write; a record that cannot be encoded fails alone."""
        outcomes: list[int | Exception] = []
        with self._lock:
            self._check_open()
            pending: list[bytes] = []
            now = time.time()
            for record, bodies in batch:
                try:
                    outcomes.append(self._append_locked(record, bodies, now, pending))
                except (TypeError, ValueError) as exc:  # this record cannot be encoded; the others go on
                    outcomes.append(exc)
            if pending:
                self._write_pending(pending)
        return outcomes

    def append(self, record: dict, bodies: dict[str, bytes] | None = None) -> int:
        """Append one record; returns its leaf index once the frame is handed to the OS (blocking)."""
        if not isinstance(record, dict):
            raise TypeError("an evidence record must be a dict")
        with self._lock:
            self._check_open()
            return self._append_locked(record, bodies, time.time())

    def _append_locked(self, record: dict, bodies: dict[str, bytes] | None, now: float,
                       pending: list[bytes] | None = None) -> int:
        """Encode and place one record; with `pending`, its frame waits there for one write of the batch."""
        if bodies and "bodies" in record:
            raise ValueError('record already has a "bodies" field')
        idx = self._size
        stored = {**record, "bodies": self._cipher.seal(idx, bodies)} if bodies else record
        payload = canonical(stored)
        data = frame(payload)
        segment = self._segment
        if segment.records and segment.bytes + len(data) > self._seg_max:
            if pending:
                self._write_pending(pending)
            segment.rotate(idx, self._cipher.key_id)
        offset = segment.append(data, pending)
        self._tree.append_leaf(sha256(b"\x00" + payload).digest())
        self._rows.append(row_for(idx, segment.first, offset, record, now))
        self._size = idx + 1
        return idx

    def _write_pending(self, pending: list[bytes]) -> None:
        """One write for a batch's frames. The tree already counts them, so a failure fails the log."""
        try:
            self._segment.write_pending(pending)
        except OSError as exc:
            self._fail(exc)
            raise EvidenceLogError(f"writing to the evidence log failed: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise EvidenceLogError("evidence log is closed")
        if self._failed is not None:
            raise EvidenceLogError(f"evidence log failed: {self._failed}") from self._failed

    def rotate_key(self, encryption_key: bytes, key_id: str | None = None) -> str:
        """Encrypt bodies from now on with a new key, in a new segment; returns its key id."""
        with self._lock:
            self._check_open()
            kid = self._cipher.set_key(encryption_key, key_id)
            self._segment.rotate(self._size, kid)
        return kid

    # ---------------------------------------------------------------- durability

    async def wait_durable(self, idx: int) -> None:
        """Return once a group fsync has covered leaf `idx` (asks the syncer to run now)."""
        if idx < self._durable.size:
            return
        if idx >= self._size:
            raise ValueError(f"leaf {idx} has not been appended")
        self._check_open()
        fut = self._durable.waiter(idx)
        if fut is None:
            return
        self._wake.set()
        await fut

    def checkpoint_now(self) -> Checkpoint:
        """fsync and sign a checkpoint covering everything appended so far (blocking)."""
        self._sync_once(force_checkpoint=True)
        return self.latest_checkpoint()

    def sync_now(self) -> int:
        """fsync everything appended so far (blocking); returns the durable size."""
        self._sync_once()
        return self._durable.size

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._sync_once()
            except Exception as exc:  # an fsync error must not be retried into silence (fsyncgate)
                logger.exception("evidence log: background sync failed; the log is now read-only")
                self._fail(exc)
                return

    def _sync_once(self, force_checkpoint: bool = False) -> None:
        with self._sync_lock:
            if self._failed is not None:  # never retry a failed fsync: the kernel may have dropped the pages
                raise EvidenceLogError(f"evidence log failed: {self._failed}") from self._failed
            with self._lock:
                size = self._size
                fd, retired, dir_dirty = self._segment.take_unsynced()
                rows = list(self._rows)
            if size > self._durable.size or retired or dir_dirty:
                for old in retired:
                    os.fdatasync(old)
                    os.close(old)
                if fd is not None:
                    os.fdatasync(fd)
                if dir_dirty:
                    fsync_dir(self._segdir)
                self._durable.advance(size)
            with self._lock:
                writes = self._tree.unflushed(size)
            for level, start, hashes in writes:
                self._tree_files.write(level, start, hashes)
            with self._lock:
                self._tree.mark_flushed(writes)
            if rows:
                self._index.add(rows)
                with self._lock:
                    del self._rows[: len(rows)]
            if self._checkpoint_due(size, force_checkpoint):
                with self._lock:
                    root = self._tree.root(size)
                self._write_checkpoint(size, root)

    def _checkpoint_due(self, size: int, force: bool) -> bool:
        last = self._last_cp.size if self._last_cp else -1
        if size <= last:
            return False
        return force or size - last >= self._cp_every or time.monotonic() - self._last_cp_mono >= self._cp_seconds

    def _write_checkpoint(self, size: int, root: bytes) -> None:
        """Tree hashes first, then the note that vouches for them: both fsynced, in that order."""
        self._tree_files.fsync()
        cp = Checkpoint(self.origin, size, root, time.time())
        if self._signing_key is not None:
            cp = cp.signed(self._signing_key)
        self._cplog.append(cp)
        self._last_cp = cp
        self._last_cp_mono = time.monotonic()

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        self._durable.fail(exc)

    # ---------------------------------------------------------------- reading

    @property
    def size(self) -> int:
        return self._size

    @property
    def durable_size(self) -> int:
        return self._durable.size

    def read_leaf(self, idx: int) -> bytes:
        """The exact stored bytes of leaf `idx` (what its Merkle leaf hash covers)."""
        seg, off = self._locate(idx)
        with self._read_lock:  # retention may close a segment's fd from another thread
            fd = self._read_fds.get(seg)
            if fd is None:
                fd = self._read_fds[seg] = os.open(self._segdir / segment_name(seg), os.O_RDONLY)
            return pread_record(fd, off, segment_name(seg))

    def get(self, idx: int) -> dict:
        """The record at `idx`, bodies decoded to bytes where a key for them is configured."""
        return self._cipher.open_record(idx, self.read_leaf(idx))

    def _locate(self, idx: int) -> tuple[int, int]:
        if not 0 <= idx < self._size:
            raise IndexError(f"leaf {idx} is not in the log (size {self._size})")
        with self._lock:
            if self._rows and idx >= self._rows[0].idx:
                row = self._rows[idx - self._rows[0].idx]
                return row.seg, row.off
        where = self._index.locate(idx)
        if where is None:
            raise KeyError(f"record {idx} was removed by retention")
        return where

    def find(self, request_id: str) -> list[int]:
        found = set(self._index.find(request_id))
        found.update(r.idx for r in self._pending() if r.request_id == request_id)
        return sorted(found)

    def select(self, since: float | None = None, until: float | None = None, model: str | None = None) -> Iterator[int]:
        """Leaf indexes with since <= time < until (and model, if given), in log order."""
        found = set(self._index.select(since, until, model))
        for r in self._pending():
            if (since is None or (r.time is not None and r.time >= since)) and \
               (until is None or (r.time is not None and r.time < until)) and (model is None or r.model == model):
                found.add(r.idx)
        return iter(sorted(found))

    def _pending(self) -> list[Row]:
        with self._lock:
            return list(self._rows)

    # ---------------------------------------------------------------- proofs & checkpoints

    def root(self, tree_size: int | None = None) -> bytes:
        with self._lock:
            return self._tree.root(tree_size)

    def inclusion_proof(self, idx: int, tree_size: int) -> list[bytes]:
        with self._lock:
            return self._tree.inclusion_proof(idx, tree_size)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        with self._lock:
            return self._tree.consistency_proof(m, n)

    def frontier_at(self, size: int) -> Frontier:
        """The tree's right edge at `size`, from stored subtree hashes (to extend it independently)."""
        with self._lock:
            nodes = [(level, self._tree.node(level, index)) for level, index in decompose(0, size)]
        return Frontier(size, nodes)

    def latest_checkpoint(self) -> Checkpoint:
        assert self._last_cp is not None
        return self._last_cp

    def checkpoints(self) -> list[Checkpoint]:
        entries, _, _ = read_log(self.directory / "checkpoints.log")
        return [e.checkpoint for e in entries if e.checkpoint is not None]

    # ---------------------------------------------------------------- holds & retention

    def set_legal_hold(self, hold_id: str, since: float | None, until: float | None, reason: str, actor: str) -> int:
        """Persist a hold (no segment with records in [since, until] is removed) and log it; returns the leaf."""
        hold = self._holds.set(hold_id, since, until, reason, actor)
        return self.append({"kind": "evidence.legal_hold_set", "time": hold.set_at, "hold_id": hold_id,
                            "since": since, "until": until, "reason": reason, "actor": actor})

    def release_legal_hold(self, hold_id: str, actor: str, reason: str) -> int:
        self._holds.release(hold_id, actor, reason)
        return self.append({"kind": "evidence.legal_hold_released", "time": time.time(), "hold_id": hold_id,
                            "reason": reason, "actor": actor})

    def legal_holds(self) -> dict[str, dict]:
        return {k: vars(v).copy() for k, v in self._holds.holds.items()}

    def apply_retention(self, now: float, retention_seconds: float) -> list[str]:
        """Delete sealed segments whose newest record is older than now - retention_seconds and
        that no legal hold touches; returns the removed segment names.

        Blocks on fsync: call it from a worker thread, not the event loop. The
        removal is first logged (an `evidence.retention_applied` record listing
        all pruned leaf ranges) and signed into a checkpoint, and only then are
        files deleted, so `verify` accepts exactly the gaps the log vouches for.
        """
        self._sync_once(force_checkpoint=True)  # a signed checkpoint covers every leaf about to lose its bytes
        with self._lock:
            active = self._segment.first
        doomed = expired_segments(list_segments(self._segdir), active, self._index.segment_times(), self._holds,
                                  now - retention_seconds, now)
        if not doomed:
            return []
        pruned = merge_ranges([(r.first, r.end) for r in self._retention.removed] + [(r.first, r.end) for r in doomed])
        self.append({"kind": "evidence.retention_applied", "time": now, "retention_seconds": retention_seconds,
                     "removed": [{"segment": r.segment, "first": r.first, "end": r.end} for r in doomed],
                     "pruned": pruned})
        self._sync_once(force_checkpoint=True)
        self._retention.add(doomed)
        for r in doomed:
            with self._read_lock:
                fd = self._read_fds.pop(r.first, None)
                if fd is not None:
                    os.close(fd)
            (self._segdir / r.segment).unlink(missing_ok=True)
            self._index.drop_segment(r.first)
        fsync_dir(self._segdir)
        logger.info("evidence log: retention removed %d segment(s)", len(doomed))
        return [r.segment for r in doomed]

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Final fsync and checkpoint; idempotent."""
        if getattr(self, "_closed", True):
            return
        self._stopping = True
        self._submissions.stop()  # everything submitted is written before the last sync
        self._wake.set()
        self._thread.join()
        try:
            if self._failed is None:
                self._sync_once(force_checkpoint=True)
        finally:
            with self._lock:
                self._closed = True
                self._segment.close()
                for fd in self._read_fds.values():
                    os.close(fd)
                self._read_fds = {}
            self._fail(EvidenceLogError("evidence log closed"))
            self._failed = None
            self._tree_files.close()
            self._index.close()
            self._cplog.close()
            os.close(self._lock_fd)

    def __enter__(self) -> "EvidenceLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

