"""Bringing a log directory back to a consistent state at open.

The segments are the truth; the tree files and the SQLite index are derived
from them and may be behind after a crash. The latest signed checkpoint is the
line between the two kinds of damage open can meet:

* an incomplete frame at the very end of the newest segment, for a record that
  nothing ever acknowledged (no index row, no tree hash, no checkpoint), is a
  write torn by a crash: it is cut with a warning and the log continues;
* anything else (a missing record a checkpoint covers, an unparseable frame
  with data after it, records that no longer match the latest checkpoint) is
  damage or tampering: open refuses, and `verify` says exactly where.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .checkpoints import Checkpoint, read_log
from .errors import EvidenceLogCorrupt, SegmentError
from .index import Index, row_for
from .merkle import leaf_hash
from .segments import FRAME, MAGIC, End, SegmentFile, SegmentReader, list_segments
from .tree import MerkleTree, TreeFiles, repair_levels, stored_leaves

logger = logging.getLogger("gateway.evidence")


@dataclass
class Recovered:
    checkpoint: Checkpoint | None  # the latest one
    tree: MerkleTree
    size: int
    tail: "Tail | None"


def recover(d: Path, segdir: Path, tree_files: TreeFiles, index: Index) -> Recovered:
    """Checkpoints, then the newest segment, then the derived tree and index, in that order of trust."""
    checkpoint = _recover_checkpoints(d / "checkpoints.log")
    covered = checkpoint.size if checkpoint else 0
    segments = drop_torn_header(list_segments(segdir))
    for seg in segments:
        check_readable(seg)
    tail = None
    size = 0
    if segments:
        tail = recover_tail(segments[-1], covered=covered, tree=tree_files, index=index)
        fsync_path(tail.segment.path)  # what a killed process left in the page cache is durable from here on
        size = tail.segment.first_index + tail.records
    if size < covered:
        raise EvidenceLogCorrupt(f"evidence log has {size} records but its latest checkpoint covers {covered}: "
                                 "records are missing; run `gateway evidence verify`")
    tree = load_tree(tree_files, segments, size, checkpoint)
    added = rebuild_index(index, segments, size)
    if added:
        logger.info("evidence log: indexed %d records that the index was missing", added)
    return Recovered(checkpoint, tree, size, tail)


def _recover_checkpoints(path: Path) -> Checkpoint | None:
    entries, end, torn = read_log(path)
    bad = [e for e in entries if e.checkpoint is None]
    if bad or not torn:
        raise EvidenceLogCorrupt(f"checkpoints.log is damaged at byte {bad[0].offset if bad else end}; "
                                 "run `gateway evidence verify`")
    if path.exists() and end < path.stat().st_size:
        logger.warning("evidence log: cutting a torn checkpoint at byte %d of checkpoints.log", end)
        os.truncate(path, end)
    return entries[-1].checkpoint if entries else None


def load_tree(files: TreeFiles, segments: list[SegmentFile], size: int, checkpoint: Checkpoint | None) -> MerkleTree:
    """The tree up to `size`, trusting stored hashes only as far as the latest checkpoint vouches for them."""
    covered = checkpoint.size if checkpoint else 0
    tree = rebuild_tree(files, segments, size, covered)
    if checkpoint and covered and tree.root(covered) != checkpoint.root:
        if segments and segments[0].first_index == 0:
            logger.error("evidence log: stored tree hashes disagree with the latest checkpoint; rebuilding")
            tree = rebuild_tree(files, segments, size, 0)
        if tree.root(covered) != checkpoint.root:
            raise EvidenceLogCorrupt(f"the records no longer match the latest signed checkpoint (size {covered}); "
                                     "run `gateway evidence verify`")
    tree.flush()
    return tree


@dataclass
class Tail:
    """The newest segment after recovery: where appends continue."""

    segment: SegmentFile
    records: int
    end_offset: int
    key_id: str | None


def drop_torn_header(segments: list[SegmentFile]) -> list[SegmentFile]:
    """A crash between creating a segment and writing its header leaves a stub: remove it."""
    while segments:
        last = segments[-1]
        with open(last.path, "rb") as fh:
            data = fh.read(4096)
        if not _is_header_prefix(data):
            break
        logger.warning("evidence log: removing segment %s with an incomplete header (crash during rotation)", last.name)
        last.path.unlink()
        segments = segments[:-1]
    return segments


def _is_header_prefix(data: bytes) -> bool:
    if len(data) < len(MAGIC):
        return MAGIC.startswith(data)
    if data[: len(MAGIC)] != MAGIC:
        return False
    rest = data[len(MAGIC):]
    if len(rest) < FRAME.size:
        return True
    length, _ = FRAME.unpack_from(rest)
    return len(rest) < FRAME.size + length


def recover_tail(last: SegmentFile, *, covered: int, tree: TreeFiles, index: Index) -> Tail:
    """Scan the newest segment; cut a torn final write, refuse anything else that is wrong."""
    with SegmentReader(last.path) as reader:
        scan, frames = reader.scan()
        count = 0
        for rec in frames:
            if not rec.crc_ok:
                logger.error("evidence log: record %d (%s offset %d) fails its checksum; it is kept for "
                             "`gateway evidence verify` to report", last.first_index + count, last.name, rec.offset)
            count += 1
        key_id = reader.header.key_id
    if scan.end is End.CLEAN:
        return Tail(last, count, scan.end_offset, key_id)
    at = last.first_index + count
    where = f"{last.name} offset {scan.end_offset}"
    if scan.end is End.BROKEN:
        raise EvidenceLogCorrupt(f"evidence log damaged: frame of record {at} ({where}) has an impossible length "
                                 "and data follows it; run `gateway evidence verify`")
    if at < covered or stored_leaves(tree) > at or index.has_at_or_after(last.first_index, scan.end_offset):
        raise EvidenceLogCorrupt(f"evidence log damaged: record {at} ({where}) is incomplete but was already "
                                 "acknowledged (indexed, hashed or checkpointed); run `gateway evidence verify`")
    torn = os.path.getsize(last.path) - scan.end_offset
    logger.warning("evidence log: cutting a torn final write of %d bytes at %s (record %d was never acknowledged)",
                   torn, where, at)
    os.truncate(last.path, scan.end_offset)
    return Tail(last, count, scan.end_offset, key_id)


@dataclass(frozen=True)
class Stored:
    index: int
    segment: SegmentFile
    offset: int
    payload: bytes
    created: float  # the segment's creation time, a stand-in for records without "time"


def iter_records(segments: list[SegmentFile], start: int, stop: int, *, allow_gaps: bool = False) -> Iterator[Stored]:
    """Leaves [start, stop) in order across segments; a missing range raises unless `allow_gaps`."""
    for i, seg in enumerate(segments):
        seg_end = segments[i + 1].first_index if i + 1 < len(segments) else stop
        if seg_end <= start or seg.first_index >= stop:
            continue
        if seg.first_index > start and not allow_gaps:
            raise EvidenceLogCorrupt(f"records {start}..{seg.first_index - 1} are missing (no segment holds them)")
        idx = seg.first_index
        with SegmentReader(seg.path) as reader:
            created = reader.header.created
            _, frames = reader.scan()
            for rec in frames:
                if idx >= stop:
                    return
                if idx >= start:
                    yield Stored(idx, seg, rec.offset, rec.payload, created)
                idx += 1
        start = max(start, idx)
    if start < stop and not allow_gaps:
        raise EvidenceLogCorrupt(f"records {start}..{stop - 1} are missing")


def rebuild_tree(files: TreeFiles, segments: list[SegmentFile], size: int, trusted: int) -> MerkleTree:
    """Trust stored hashes below `trusted` leaves, recompute the rest of [0, size) from records."""
    start = min(stored_leaves(files), trusted)
    repair_levels(files, start)
    tree = MerkleTree(files, start)
    for rec in iter_records(segments, start, size):
        tree.append_leaf(leaf_hash(rec.payload))
    return tree


def rebuild_index(index: Index, segments: list[SegmentFile], size: int) -> int:
    """Add missing rows (and drop rows past the end); returns how many were added."""
    nxt = index.next_index()
    if nxt > size:
        index.drop_from(size)
        nxt = size
    first = segments[0].first_index if segments else size
    nxt = max(nxt, first, 0)
    batch, added = [], 0
    for rec in iter_records(segments, nxt, size, allow_gaps=True):
        try:
            record = json.loads(rec.payload)
        except ValueError:
            record = {}
        fields = record if isinstance(record, dict) else {}
        batch.append(row_for(rec.index, rec.segment.first_index, rec.offset, fields, rec.created))
        if len(batch) >= 5000:
            index.add(batch)
            added += len(batch)
            batch = []
    if batch:
        index.add(batch)
        added += len(batch)
    return added


def fsync_path(path: os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_readable(segment: SegmentFile) -> None:
    try:
        SegmentReader(segment.path).close()
    except SegmentError as exc:
        raise EvidenceLogCorrupt(f"evidence log damaged: {exc}; run `gateway evidence verify`") from None
