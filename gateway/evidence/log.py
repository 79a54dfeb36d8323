"""`EvidenceLog`: the append-only, tamper-evident evidence store.

The request path calls `append`, which only encodes, (optionally) encrypts,
frames and `os.write`s the record and folds its leaf hash into an in-memory
frontier. Everything slow happens on one background thread every
`fsync_interval`: a group fdatasync, then (for what that fsync made durable
only) the tree hash files and the SQLite index, then a signed checkpoint when
one is due. Callers that must not answer before the record is on disk await
`wait_durable`.

Directory layout (see docs/evidence.md):

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

import asyncio
import json
import logging
import os
import threading
import time
from collections import deque
from hashlib import sha256
from pathlib import Path
from typing import Iterator, Mapping

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import recovery
from .checkpoints import Checkpoint, CheckpointLog, read_log
from .crypto import BodyCipher
from .index import Index, Row, row_for
from .recovery import EvidenceLogError
from .layout import acquire_lock, load_meta, remember_public_key
from .retention import HoldStore, RetentionManifest, expired_segments, fsync_dir, merge_ranges
from .segments import SegmentHeader, frame, list_segments, pread_record, segment_name
from .merkle import Frontier, decompose
from .tree import TreeFiles

logger = logging.getLogger("gateway.evidence")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


def canonical(record: Mapping[str, object]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per record, so one leaf hash.

    orjson writes the same bytes as `json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` for the records the gateway makes, eight times faster. NaN and
    infinities, which JSON cannot carry, are written as null.
    """
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # orjson raises TypeError (a subclass of it) for unserialisable values
        raise ValueError(f"an evidence record must be plain JSON: {exc}") from None


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
        self._writer = threading.Thread(target=self._write_forever, name="evidence-writer", daemon=True)
        self._writer.start()

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
        self._size = self._durable = state.size
        self._rows: list[Row] = []
        self._retired: list[int] = []
        self._dir_dirty = False
        self._read_fds: dict[int, int] = {}
        self._seg_fd: int | None = None
        self._seg_records = 0
        tail = state.tail
        if tail is None or tail.key_id != self._cipher.key_id or tail.end_offset >= self._seg_max:
            if tail is not None:  # a key change or a full segment: continue in a new one
                self._seg_first, self._seg_records = tail.segment.first_index, tail.records
            self._rotate(self._cipher.key_id)
        else:
            self._seg_first, self._seg_records, self._seg_bytes = tail.segment.first_index, tail.records, tail.end_offset
            self._seg_fd = os.open(tail.segment.path, os.O_WRONLY | os.O_APPEND)
        self._tree_files.fsync()
        if self._last_cp is None:
            self._write_checkpoint(self._size, self._tree.root())

    def _init_sync_state(self) -> None:
        self._submitted: deque[tuple[dict, dict[str, bytes] | None, asyncio.Future[int], asyncio.AbstractEventLoop]] = deque()
        self._submit_wake = threading.Event()
        self._writer_idle = False
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._wait_lock = threading.Lock()
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

        A writer thread takes everything submitted since its last pass, encodes it and
        hands it to the OS in one write. The loop never waits on the disk (a write can
        stall for milliseconds while a group fsync commits), and under load one system
        call and one wake-up of the loop serve many records.
        """
        if not isinstance(record, dict):
            raise TypeError("an evidence record must be a dict")
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._submitted.append((record, bodies, fut, loop))
        if self._writer_idle:  # wake it only when it sleeps: under load it is already busy
            self._submit_wake.set()
        return fut

    def _write_forever(self) -> None:
        while True:
            if not self._submitted:
                self._writer_idle = True
                if not self._submitted and not self._stopping:  # look again after saying so: no lost wake-up
                    self._submit_wake.wait(0.05)
                self._writer_idle = False
                self._submit_wake.clear()
            while self._submitted:
                batch = []
                while self._submitted and len(batch) < 1024:
                    batch.append(self._submitted.popleft())
                self._write_batch(batch)
            if self._stopping and not self._submitted:
                return

    def _write_batch(self, batch: list) -> None:
        results: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int], int | BaseException]] = []
        try:
            with self._lock:
                self._check_open()
                pending: list[bytes] = []
                now = time.time()
                for record, bodies, fut, loop in batch:
                    try:
                        results.append((loop, fut, self._append_locked(record, bodies, now, pending)))
                    except (TypeError, ValueError) as exc:  # this record cannot be encoded; the others go on
                        results.append((loop, fut, exc))
                if pending:
                    self._write_pending(pending)
        except BaseException as exc:  # the log failed or closed: nobody in this batch was written
            results = [(loop, fut, exc) for _, _, fut, loop in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, fut, outcome in results:
            by_loop.setdefault(loop, []).append((fut, outcome))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, settled)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

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
        if self._seg_records and self._seg_bytes + len(data) > self._seg_max:
            if pending:
                self._write_pending(pending)
            self._rotate(self._cipher.key_id)
        offset = self._seg_bytes
        if pending is None:
            self._write(data)
        else:
            pending.append(data)
        self._seg_bytes = offset + len(data)
        self._seg_records += 1
        self._tree.append_leaf(sha256(b"\x00" + payload).digest())
        self._rows.append(row_for(idx, self._seg_first, offset, record, now))
        self._size = idx + 1
        return idx

    def _write_pending(self, pending: list[bytes]) -> None:
        """One write for a batch's frames. The tree already counts them, so a failure fails the log."""
        data = b"".join(pending)
        pending.clear()
        start = self._seg_bytes - len(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._seg_fd, data[done:])  # type: ignore[arg-type]
        except OSError as exc:
            if done:
                os.ftruncate(self._seg_fd, start)  # type: ignore[arg-type]
            self._fail(exc)
            raise EvidenceLogError(f"writing to the evidence log failed: {exc}") from exc

    def _write(self, data: bytes) -> None:
        """os.write all of `data`, or undo the partial frame and raise (the log stays well-formed)."""
        assert self._seg_fd is not None
        done = 0
        try:
            while done < len(data):
                done += os.write(self._seg_fd, data[done:])
        except OSError:
            if done:
                os.ftruncate(self._seg_fd, self._seg_bytes)
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise EvidenceLogError("evidence log is closed")
        if self._failed is not None:
            raise EvidenceLogError(f"evidence log failed: {self._failed}") from self._failed

    def _rotate(self, key_id: str | None) -> None:
        """Start a new segment at the current size (caller holds the lock or is still opening)."""
        first = self._size
        path = self._segdir / segment_name(first)
        if self._seg_records == 0 and path.exists():
            path.unlink()  # an empty segment (e.g. right after a key change) is replaced, not kept
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        header = SegmentHeader(first, key_id, time.time(), self._meta["log_id"]).encode()
        os.write(fd, header)
        if self._seg_fd is not None:
            self._retired.append(self._seg_fd)  # the syncer fsyncs and closes it; it may hold its number
        self._seg_fd, self._seg_first, self._seg_bytes, self._seg_records = fd, first, len(header), 0
        self._dir_dirty = True

    def rotate_key(self, encryption_key: bytes, key_id: str | None = None) -> str:
        """Encrypt bodies from now on with a new key, in a new segment; returns its key id."""
        with self._lock:
            self._check_open()
            kid = self._cipher.set_key(encryption_key, key_id)
            self._rotate(kid)
        return kid

    # ---------------------------------------------------------------- durability

    async def wait_durable(self, idx: int) -> None:
        """Return once a group fsync has covered leaf `idx` (asks the syncer to run now)."""
        if idx < self._durable:
            return
        if idx >= self._size:
            raise ValueError(f"leaf {idx} has not been appended")
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._wait_lock:
            if idx < self._durable:
                return
            self._waiters.append((idx, loop, fut))
        self._wake.set()
        await fut

    def checkpoint_now(self) -> Checkpoint:
        """fsync and sign a checkpoint covering everything appended so far (blocking)."""
        self._sync_once(force_checkpoint=True)
        return self.latest_checkpoint()

    def sync_now(self) -> int:
        """fsync everything appended so far (blocking); returns the durable size."""
        self._sync_once()
        return self._durable

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
                size, fd = self._size, self._seg_fd
                retired, self._retired = self._retired, []
                rows = list(self._rows)
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            if size > self._durable or retired or dir_dirty:
                for old in retired:
                    os.fdatasync(old)
                    os.close(old)
                if fd is not None:
                    os.fdatasync(fd)
                if dir_dirty:
                    fsync_dir(self._segdir)
                self._mark_durable(size)
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

    def _mark_durable(self, size: int) -> None:
        with self._wait_lock:
            self._durable = max(self._durable, size)
            ready = [w for w in self._waiters if w[0] < size]
            self._waiters = [w for w in self._waiters if w[0] >= size]
        for _, loop, fut in ready:
            _settle(loop, fut, None)

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        with self._wait_lock:
            waiters, self._waiters = self._waiters, []
        for _, loop, fut in waiters:
            _settle(loop, fut, exc)

    # ---------------------------------------------------------------- reading

    @property
    def size(self) -> int:
        return self._size

    @property
    def durable_size(self) -> int:
        return self._durable

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
        record = json.loads(self.read_leaf(idx))
        if isinstance(record.get("bodies"), dict):
            record["bodies"] = self._cipher.open(idx, record["bodies"])
        return record

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
            active = self._seg_first
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
        self._submit_wake.set()
        self._writer.join()  # everything submitted is written before the last sync
        self._wake.set()
        self._thread.join()
        try:
            if self._failed is None:
                self._sync_once(force_checkpoint=True)
        finally:
            with self._lock:
                self._closed = True
                for fd in [self._seg_fd, *self._retired, *self._read_fds.values()]:
                    if fd is not None:
                        os.close(fd)
                self._seg_fd, self._retired, self._read_fds = None, [], {}
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


def _settle_all(settled: list) -> None:
    """On the submitting loop: resolve a written batch's futures with their indexes (or errors)."""
    for fut, outcome in settled:
        if fut.done():
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], exc: BaseException | None) -> None:
    def done() -> None:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # that loop is closed: nobody is waiting any more
        pass
