"""Offline verification of an evidence log directory.

Trust comes only from the signed checkpoints and the record bytes: every
record is re-hashed, the RFC 9162 tree is rebuilt from those hashes, and each
checkpoint's signature and root are checked against it. The stored tree files
are used for two things only, neither of which they can fake:

* to say *which* record is bad: the leaf hash logged at append time is compared
  with the re-hashed record, and a mismatch inside a checkpoint whose root no
  longer matches names that record (a mismatch inside a checkpoint that still
  matches is a damaged tree file, a warning);
* for ranges removed by retention: the stored subtree hashes stand in for the
  deleted records, and they are only accepted because the resulting roots and
  consistency proofs check against the signed checkpoints.
"""

from __future__ import annotations

import base64
import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoints import Checkpoint, read_log
from .crypto import load_public_keys
from .errors import SegmentError, VerifyError
from .layout import FORMAT
from .merkle import EMPTY_ROOT, HASH_SIZE, Frontier, decompose, leaf_hash, verify_consistency
from .report import Problem, Report
from .segments import End, SegmentFile, SegmentReader, list_segments
from .tree import MerkleTree, TreeFiles, stored_leaves


@dataclass(frozen=True)
class LogProblem(Problem):
    """A bad record (its index, and where it is stored when known) or, failing that, a bad checkpoint."""

    reason: str
    index: int | None = None
    segment: str | None = None
    offset: int | None = None
    checkpoint: int | None = None
    size: int | None = None

    @property
    def where(self) -> str:
        if self.index is not None:
            where = f"record {self.index}"
            if self.segment is not None:
                where += f" (segment {self.segment}, offset {self.offset})"
            return where
        return f"checkpoint #{self.checkpoint} (size {self.size})"


@dataclass
class VerifyReport(Report[LogProblem]):
    directory: Path
    records: int = 0
    removed_records: int = 0
    segments: int = 0
    checkpoints: int = 0
    latest: Checkpoint | None = None
    key_source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def first_problem(self) -> LogProblem | None:
        """The first bad record by leaf index; failing that, the first bad checkpoint."""
        records = [p for p in self.problems if p.index is not None]
        if records:
            return min(records, key=lambda p: p.index)  # type: ignore[arg-type, return-value]
        return self.problems[0] if self.problems else None

    def verified(self) -> str:
        latest = self.latest
        head = f"latest size {latest.size} root {base64.b64encode(latest.root).decode()}" if latest else "none"
        removed = f" ({self.removed_records} removed by retention)" if self.removed_records else ""
        return (f"{self.records} records{removed} in {self.segments} segment(s); "
                f"{self.checkpoints} checkpoint(s) verified, {head}; signatures checked against {self.key_source}")


def verify_log(directory: str | os.PathLike[str],
               public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey] | None = None) -> VerifyReport:
    """Check everything `docs/evidence.md` promises; raises VerifyError only if nothing can be read."""
    return _Verifier(Path(directory), public_key).run()


class _Verifier:
    def __init__(self, d: Path, public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey] | None) -> None:
        if not d.is_dir():
            raise VerifyError(f"{d}: not a directory")
        try:
            meta = json.loads((d / "log.json").read_text())
        except (OSError, ValueError) as exc:
            raise VerifyError(f"{d}: not a readable evidence log ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise VerifyError(f"{d}: log.json does not describe an evidence log")
        self.d, self.meta = d, meta
        self.report = VerifyReport(d)
        self.keys = self._keys(public_key)
        self.stored = TreeFiles(d / "tree", writable=False)
        self.stored_leaves = self.stored.count(0)
        self._stored_chunk: tuple[int, bytes] = (0, b"")
        self.frontier = Frontier()
        self.broken = False        # the rebuilt tree lost continuity: later roots cannot be checked
        self.suspect: LogProblem | None = None
        self.matched: dict[int, bool] = {}   # checkpoint number -> root matched the records
        self.last_good = 0
        self.root_mismatch_reported = False
        self.segment_files: list[SegmentFile] = []
        self.gaps: list[tuple[int, int]] = []
        self.pruned: tuple[int, list[tuple[int, int]]] | None = None  # latest retention record: (leaf, ranges)

    # -------------------------------------------------------------- keys & checkpoints

    def _keys(self, given: Ed25519PublicKey | Iterable[Ed25519PublicKey] | None) -> list[Ed25519PublicKey]:
        if given is not None:
            self.report.key_source = "the given key"
            return [given] if isinstance(given, Ed25519PublicKey) else list(given)
        path = self.d / "checkpoint-keys.pem"
        if not path.exists():
            self.report.key_source = "no key (checkpoints unsigned)"
            return []
        try:
            keys = load_public_keys(path.read_bytes())
        except ValueError as exc:
            raise VerifyError(f"{path}: {exc}") from None
        self.report.key_source = "the key(s) stored in the log directory (pass --key for an independent check)"
        return keys

    def _load_checkpoints(self) -> list[tuple[int, Checkpoint]]:
        path = self.d / "checkpoints.log"
        entries, end, torn = read_log(path)
        cps: list[tuple[int, Checkpoint]] = []
        for e in entries:
            if e.checkpoint is None:
                self._ckpt_problem(e.number, None, f"does not parse ({e.error})")
            else:
                cps.append((e.number, e.checkpoint))
        if not torn:
            self._ckpt_problem(len(entries), None, f"checkpoints.log is damaged at byte {end}")
        elif path.exists() and end < path.stat().st_size:
            self.report.warnings.append("checkpoints.log ends in an incomplete note (torn write); ignored")
        last_size = 0
        for number, cp in cps:
            if cp.origin != self.meta.get("origin"):
                self._ckpt_problem(number, cp.size, f"origin {cp.origin!r} is not this log's")
            if cp.size < last_size:
                self._ckpt_problem(number, cp.size, f"tree size went backwards (from {last_size})")
            last_size = max(last_size, cp.size)
        self.report.checkpoints = len(cps)
        latest = max(cps, key=lambda nc: nc[1].size, default=None)
        self.latest_number = latest[0] if latest else None
        self.report.latest = latest[1] if latest else None
        return cps

    def _check_signatures(self, cps: list[tuple[int, Checkpoint]]) -> None:
        """Report the first checkpoint no trusted key signed, naming the first record it leaves unproven."""
        if not self.keys:
            for number, cp in cps:
                if cp.signatures:
                    self._ckpt_problem(number, cp.size, "is signed but no public key is available to check it")
            if cps:
                self.report.warnings.append("checkpoints are unsigned: only internal consistency was checked")
            return
        trusted_size = 0
        bad = []
        for number, cp in cps:
            if cp.verified_by(self.keys):
                if not bad:
                    trusted_size = max(trusted_size, cp.size)
            else:
                bad.append((number, cp))
        if not bad:
            return
        number, cp = bad[0]
        who = "the given key" if self.report.key_source == "the given key" else "any key stored in the log"
        at = min(trusted_size, max(self.report.records - 1, 0))
        seg, off = self._where(at)
        more = f" ({len(bad)} untrusted checkpoints in all)" if len(bad) > 1 else ""
        self.report.problems.append(LogProblem(
            f"checkpoint #{number} (size {cp.size}) is not validly signed by {who}{more}: records from here on "
            "are not covered by a trusted checkpoint", at, seg, off))

    def _ckpt_problem(self, number: int, size: int | None, reason: str) -> None:
        self.report.problems.append(LogProblem(reason, checkpoint=number, size=size))

    # -------------------------------------------------------------- records

    def run(self) -> VerifyReport:
        cps = self._load_checkpoints()
        by_size = sorted(cps, key=lambda nc: (nc[1].size, nc[0]))
        self._pending = deque(by_size)
        self._check_root_at(0)
        segments = self.segment_files = self._segments()
        pos = 0
        for i, seg in enumerate(segments):
            if seg.first_index > pos:
                self._gap(pos, seg.first_index)
            elif seg.first_index < pos:
                self._record_problem(seg.first_index, seg.name, 0,
                                     f"segment starts at record {seg.first_index} but earlier segments end at {pos}")
                self.broken = True
            pos = self._segment(seg, seg.first_index, is_last=i == len(segments) - 1)
        self.report.records = pos
        self.report.segments = len(segments)
        self._check_tail(pos, segments)
        self._check_gaps_vouched()
        self._classify_suspect(by_size)
        self._check_signatures(cps)
        self._check_consistency(cps)
        self.stored.close()
        return self.report

    def _segments(self) -> list[SegmentFile]:
        try:
            return list_segments(self.d / "segments")
        except OSError as exc:
            raise VerifyError(f"{self.d}: cannot list segments ({exc})") from None

    def _gap(self, start: int, end: int) -> None:
        """Leaves [start, end) have no segment: fine if retention removed them, provable via stored hashes."""
        self.report.removed_records += end - start
        self.gaps.append((start, end))
        for level, index in decompose(start, end):
            try:
                node = self.stored.read(level, index)
            except LookupError:
                self.report.problems.append(LogProblem(
                    f"records {start}..{end - 1} were removed and their stored tree hashes are missing, "
                    "so later checkpoints cannot be checked", start))
                self.broken = True
                return
            self.frontier.append(level, node)
        self._check_root_at(end)

    def _segment(self, seg: SegmentFile, pos: int, *, is_last: bool) -> int:
        try:
            reader = SegmentReader(seg.path)
        except (SegmentError, OSError) as exc:
            self._record_problem(pos, seg.name, 0, f"segment unreadable: {exc}")
            self.broken = True
            return pos
        with reader:
            if reader.header.first_index != seg.first_index:
                self._record_problem(pos, seg.name, 0, f"segment header says it starts at record "
                                                       f"{reader.header.first_index}, its name says {seg.first_index}")
            if reader.header.log_id != self.meta.get("log_id"):
                self._record_problem(pos, seg.name, 0, "segment belongs to another log (log id differs)")
            scan, frames = reader.scan()
            for rec in frames:
                self._record(pos, seg.name, rec.offset, rec.payload, rec.crc_ok)
                pos += 1
            self._segment_end(scan.end, scan.end_offset, seg, pos, is_last)
        return pos

    def _record(self, idx: int, seg: str, offset: int, payload: bytes, crc_ok: bool) -> None:
        if not crc_ok:
            self._record_problem(idx, seg, offset, "frame checksum mismatch: the record bytes were altered")
        else:
            self._inspect(idx, seg, offset, payload)
        digest = leaf_hash(payload)
        if self.suspect is None and idx < self.stored_leaves and self._stored_leaf(idx) != digest:
            self.suspect = LogProblem("differs from the leaf hash logged when it was appended "
                                   "(record altered, removed, inserted or reordered)", idx, seg, offset)
        if not self.broken:
            self.frontier.append(0, digest)
            self._check_root_at(idx + 1)

    def _inspect(self, idx: int, seg: str, offset: int, payload: bytes) -> None:
        try:
            rec = json.loads(payload)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            self._record_problem(idx, seg, offset, "record is not a JSON object")
        elif rec.get("kind") == "evidence.retention_applied" and isinstance(rec.get("pruned"), list):
            self.pruned = (idx, [(int(a), int(b)) for a, b in rec["pruned"]])

    def _stored_leaf(self, idx: int) -> bytes:
        base, chunk = self._stored_chunk
        if not base <= idx < base + len(chunk) // HASH_SIZE:
            base, chunk = idx, self.stored.read_range(0, idx, 4096)
            self._stored_chunk = (base, chunk)
        at = (idx - base) * HASH_SIZE
        return chunk[at:at + HASH_SIZE]

    def _segment_end(self, end: End, offset: int, seg: SegmentFile, pos: int, is_last: bool) -> None:
        if end is End.CLEAN:
            return
        latest = self.report.latest.size if self.report.latest else 0
        if end is End.TORN and is_last and pos >= latest:
            self.report.warnings.append(f"{seg.name} ends in a torn write at offset {offset} after the last "
                                        "checkpoint (a crash; the next open cuts it)")
            return
        what = "is incomplete" if end is End.TORN else "has an impossible frame length: the framing is destroyed"
        self._record_problem(pos, seg.name, offset, f"record {what}")
        self.broken = True

    def _record_problem(self, idx: int, seg: str | None, offset: int | None, reason: str) -> None:
        self.report.problems.append(LogProblem(reason, idx, seg, offset))

    # -------------------------------------------------------------- tree vs checkpoints

    def _check_root_at(self, size: int) -> None:
        """Compare the rebuilt root with every checkpoint of exactly this size."""
        while self._pending and self._pending[0][1].size <= size:
            number, cp = self._pending.popleft()
            if cp.size < size or self.broken:
                continue  # inside a removed range or after lost framing: left to consistency proofs
            root = self.frontier.root() if size else EMPTY_ROOT
            self.matched[number] = root == cp.root
            if root == cp.root:
                self.last_good = max(self.last_good, size)
            elif not self.root_mismatch_reported:
                self.root_mismatch_reported = True
                self._ckpt_problem(number, cp.size, "root hash does not match the tree rebuilt from the records "
                                   f"(this checkpoint, or a record from index {self.last_good} on, was altered)")

    def _check_gaps_vouched(self) -> None:
        """Only ranges that a checkpointed `evidence.retention_applied` record lists may be missing."""
        latest = self.report.latest.size if self.report.latest else 0
        ranges = self.pruned[1] if self.pruned and self.pruned[0] < latest else []
        for start, end in self.gaps:
            if not any(a <= start and end <= b for a, b in ranges):
                self._record_problem(start, None, None, f"records {start}..{end - 1} are missing and no "
                                     "checkpointed retention record in the log vouches for their removal")

    def _check_tail(self, total: int, segments: list[SegmentFile]) -> None:
        latest = self.report.latest
        if latest and total > latest.size:
            self.report.warnings.append(f"the last {total - latest.size} record(s) are not covered by a checkpoint "
                                        "yet (they will be at the next one)")
        stored = stored_leaves(self.stored)
        claimed = max(latest.size if latest else 0, stored)
        if claimed > total:
            seg = segments[-1].name if segments else None
            off = segments[-1].path.stat().st_size if segments else None
            who = f"checkpoint #{self.latest_number}" if latest and latest.size == claimed else "the stored tree"
            self._record_problem(total, seg, off, f"the log ends here but {who} covers {claimed} records: "
                                                  "the tail was cut")

    def _classify_suspect(self, by_size: list[tuple[int, Checkpoint]]) -> None:
        """A record that differs from its logged hash is the culprit only if a checkpoint over it fails."""
        s = self.suspect
        if s is None or s.index is None:
            return
        covering = [n for n, cp in by_size if cp.size > s.index and n in self.matched]
        if covering and not self.matched[covering[0]]:
            self.report.problems.append(s)
        elif covering:
            self.report.warnings.append(f"tree file L00 is damaged at leaf {s.index} (the record itself matches "
                                        "the signed checkpoints)")
        else:
            self.report.warnings.append(f"record {s.index} differs from the unsigned tree cache beyond the latest "
                                        "checkpoint")

    def _check_consistency(self, cps: list[tuple[int, Checkpoint]]) -> None:
        """Consecutive checkpoints must describe one growing tree (RFC 9162 2.1.4)."""
        tree: MerkleTree | None = None
        for (na, a), (nb, b) in zip(cps, cps[1:]):
            if a.size > b.size:
                continue  # reported as going backwards
            if a.size == b.size:
                if a.root != b.root:
                    self._ckpt_problem(nb, b.size, f"same size as checkpoint #{na} but a different root (a fork)")
                continue
            if self.matched.get(na) and self.matched.get(nb):
                continue  # both roots were rebuilt from the same records: consistent by construction
            try:
                tree = tree or MerkleTree(self.stored, stored_leaves(self.stored))
                proof = tree.consistency_proof(a.size, b.size) if a.size else []
            except (LookupError, ValueError) as exc:
                self._ckpt_problem(nb, b.size, f"cannot prove consistency with checkpoint #{na}: {exc}")
                continue
            if not verify_consistency(a.size, b.size, a.root, b.root, proof):
                self._ckpt_problem(nb, b.size, f"is not consistent with checkpoint #{na} (size {a.size}): "
                                   "the log was rewritten between them")

    def _where(self, idx: int) -> tuple[str | None, int | None]:
        """Segment and offset of one record, found by re-reading only its segment."""
        holders = [s for s in self.segment_files if s.first_index <= idx]
        if not holders:
            return None, None
        seg = holders[-1]
        try:
            with SegmentReader(seg.path) as reader:
                _, frames = reader.scan()
                for n, rec in enumerate(frames):
                    if seg.first_index + n == idx:
                        return seg.name, rec.offset
        except (SegmentError, OSError):
            pass
        return seg.name, None
