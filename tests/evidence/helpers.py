"""Helpers for evidence tests: real logs in tmp dirs, and byte-level access to their files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.evidence import EvidenceLog
from gateway.evidence.segments import SegmentReader, list_segments


@dataclass(frozen=True)
class FrameAt:
    index: int
    path: Path
    offset: int
    length: int  # whole frame, header included
    payload: bytes


def frames(directory: Path) -> list[FrameAt]:
    """Every record frame in leaf order, read straight from the segment files."""
    out = []
    for seg in list_segments(Path(directory) / "segments"):
        with SegmentReader(seg.path) as reader:
            _, recs = reader.scan()
            for n, rec in enumerate(recs):
                out.append(FrameAt(seg.first_index + n, seg.path, rec.offset, 8 + len(rec.payload), rec.payload))
    return out


def open_log(directory: Path, key=None, **kw) -> EvidenceLog:
    kw.setdefault("encryption_key", None)
    kw.setdefault("key_id", None)
    return EvidenceLog.open(directory, signing_key=key, **kw)


def fill(directory: Path, key, n: int, **kw) -> None:
    """A closed log of n records spread over several small segments, checkpointed every 10."""
    kw.setdefault("segment_max_bytes", 2048)
    kw.setdefault("checkpoint_every", 10)
    with open_log(directory, key, **kw) as log:
        for i in range(n):
            log.append(record(i))
            if i % 10 == 9:
                log.sync_now()


def record(i: int, **extra) -> dict:
    return {"kind": "decision", "time": 1_700_000_000.0 + i, "request_id": f"req-{i}", "model": "m-a" if i % 2 else "m-b",
            "decision": "allow", "n": i, **extra}


def splice(path: Path, offset: int, remove: int, insert: bytes = b"") -> None:
    data = path.read_bytes()
    path.write_bytes(data[:offset] + insert + data[offset + remove:])


def all_bytes(directory: Path) -> bytes:
    chunks = []
    for root, _, files in os.walk(directory):
        for name in files:
            chunks.append(Path(root, name).read_bytes())
    return b"\n".join(chunks)


def rewrite_log(directory: Path, key, records: list[dict]) -> None:
    """Replace a log's contents with `records`, signed by `key` (its own), keeping its identity: what a forger with
    the writer's key and the files can do. The writer must be stopped; the caller holds its lock if others might open it."""
    import shutil

    from gateway.evidence import LogReader

    reader = LogReader.open(directory)
    origin = reader.origin
    reader.close()
    forged = directory.with_name(directory.name + ".forged")
    with EvidenceLog.open(forged, signing_key=key, origin=origin) as log:
        for record in records:
            bodies = record.pop("bodies", None)
            log.append(record, {k: v for k, v in (bodies or {}).items() if isinstance(v, bytes)} or None)
    for name in ("segments", "tree", "checkpoints.log", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        target = directory / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if (forged / name).exists():
            shutil.move(str(forged / name), str(target))
    shutil.rmtree(forged)
