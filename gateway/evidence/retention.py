"""Legal holds and retention.

Holds live in `holds.json` (rewritten atomically) with their full history, and
every set/release is also appended to the log itself as a record, so the hold
history is covered by the Merkle tree.

Retention deletes whole sealed segments, never the active one and never one
whose records' time range overlaps a hold. It deletes record bytes only: the
per-level tree hashes and every checkpoint stay, so removed leaves remain
provable (their hashes are still in the tree) and the remaining log still
verifies. Each removal is declared in `retention.json` and in an
`evidence.retention_applied` record, which is how `verify` tells a segment
removed by policy from one deleted by someone else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from .segments import SegmentFile, SegmentReader


def write_json_atomic(path: Path, value: object) -> None:
    """Write-fsync-rename-fsync(dir): a crash leaves the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, sort_keys=True, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Hold:
    hold_id: str
    since: float | None
    until: float | None
    reason: str
    actor: str
    set_at: float

    def covers(self, lo: float, hi: float) -> bool:
        """Does [since, until] overlap a segment whose records span [lo, hi]?"""
        return (self.since is None or self.since <= hi) and (self.until is None or self.until >= lo)


class HoldStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        data = json.loads(self.path.read_text()) if self.path.exists() else {"holds": {}, "history": []}
        self.holds: dict[str, Hold] = {k: Hold(**v) for k, v in data["holds"].items()}
        self.history: list[dict] = data["history"]

    def set(self, hold_id: str, since: float | None, until: float | None, reason: str, actor: str) -> Hold:
        if hold_id in self.holds:
            raise ValueError(f"legal hold {hold_id!r} is already active")
        if since is not None and until is not None and until < since:
            raise ValueError("legal hold ends before it starts")
        hold = Hold(hold_id, since, until, reason, actor, time.time())
        self.holds[hold_id] = hold
        self.history.append({"event": "set", **asdict(hold)})
        self._save()
        return hold

    def release(self, hold_id: str, actor: str, reason: str) -> Hold:
        hold = self.holds.pop(hold_id, None)
        if hold is None:
            raise KeyError(f"no active legal hold {hold_id!r}")
        self.history.append({"event": "released", "hold_id": hold_id, "actor": actor, "reason": reason, "at": time.time()})
        self._save()
        return hold

    def held(self, lo: float, hi: float) -> bool:
        return any(h.covers(lo, hi) for h in self.holds.values())

    def _save(self) -> None:
        write_json_atomic(self.path, {"holds": {k: asdict(v) for k, v in self.holds.items()}, "history": self.history})


@dataclass(frozen=True)
class Removed:
    """A deleted segment: leaves [first, end) whose hashes stay in the tree files."""

    segment: str
    first: int
    end: int
    removed_at: float


class RetentionManifest:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        data = json.loads(self.path.read_text()) if self.path.exists() else {"removed": []}
        self.removed: list[Removed] = [Removed(**r) for r in data["removed"]]

    def add(self, items: Iterable[Removed]) -> None:
        self.removed.extend(items)
        write_json_atomic(self.path, {"removed": [asdict(r) for r in self.removed]})


def expired_segments(segments: list[SegmentFile], active: int, times: dict[int, tuple[float | None, float | None]],
                     holds: HoldStore, cutoff: float, now: float) -> list[Removed]:
    """Sealed segments whose newest record is older than `cutoff` and that no hold touches.

    `times` maps a segment's first index to the min/max record time from the
    index; a segment without indexed records is dated by its header.
    """
    doomed = []
    for seg, nxt in zip(segments, segments[1:]):
        if seg.first_index == active:
            continue
        lo, hi = times.get(seg.first_index, (None, None))
        if lo is None or hi is None:
            with SegmentReader(seg.path) as reader:
                lo = hi = reader.header.created
        if hi < cutoff and not holds.held(lo, hi):
            doomed.append(Removed(seg.name, seg.first_index, nxt.first_index, now))
    return doomed


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
