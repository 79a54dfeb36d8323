"""Segment files: the append-only record store.

A segment is `MAGIC`, then a header frame (JSON: first leaf index, key id, ...),
then one frame per record. A frame is `length:u32be | crc32(payload):u32be |
payload`; the payload is the canonical JSON record, which is also the Merkle
leaf. The CRC is not a security measure (the tree is): it only lets open tell
a write torn by a crash from a complete frame.

Only the newest segment is written (`ActiveSegment`); older ones are sealed.
Scanning classifies how a segment ends, because open must treat the cases
differently: a torn tail may be cut, anything else is evidence of damage and is
left in place for `verify` to report.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator

from .errors import SegmentError

MAGIC = b"OGEVSEG1"
FRAME = struct.Struct(">II")
MAX_PAYLOAD = 1 << 28
SEGMENT_RE = re.compile(r"^(\d{12})\.seg$")


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def segment_name(first_index: int) -> str:
    return f"{first_index:012d}.seg"


@dataclass(frozen=True)
class SegmentHeader:
    first_index: int
    key_id: str | None
    created: float
    log_id: str

    def encode(self) -> bytes:
        body = {"v": 1, "first_index": self.first_index, "key_id": self.key_id,
                "cipher": "AES-256-GCM" if self.key_id else None, "created": self.created, "log_id": self.log_id}
        return MAGIC + frame(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SegmentFile:
    path: Path
    first_index: int

    @property
    def name(self) -> str:
        return self.path.name


def list_segments(directory: Path) -> list[SegmentFile]:
    """Segments sorted by first leaf index; files with other names are ignored."""
    found = []
    for entry in os.scandir(directory):
        m = SEGMENT_RE.match(entry.name)
        if m and entry.is_file():
            found.append(SegmentFile(Path(entry.path), int(m.group(1))))
    return sorted(found, key=lambda s: s.first_index)


class End(Enum):
    CLEAN = "clean"      # the last frame ends exactly at end of file
    TORN = "torn"        # an incomplete frame (or zero fill) at end of file: a crash mid-write
    BROKEN = "broken"    # a frame length that cannot be right, with data after it


@dataclass(frozen=True)
class Record:
    offset: int
    payload: bytes
    crc_ok: bool


@dataclass
class Scan:
    """What reading a segment found; `end`/`end_offset` are set once iteration finishes."""

    header: SegmentHeader
    data_offset: int
    size: int
    end: End = End.CLEAN
    end_offset: int = 0


def parse_header(data: bytes | mmap.mmap, name: str) -> tuple[SegmentHeader, int]:
    if len(data) < len(MAGIC) + FRAME.size or data[: len(MAGIC)] != MAGIC:
        raise SegmentError(f"{name}: not an evidence segment (bad magic or too short)")
    length, crc = FRAME.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + FRAME.size
    raw = bytes(data[start:start + length])
    if len(raw) != length or zlib.crc32(raw) != crc:
        raise SegmentError(f"{name}: segment header is damaged")
    try:
        h = json.loads(raw)
        header = SegmentHeader(int(h["first_index"]), h.get("key_id"), float(h["created"]), str(h["log_id"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SegmentError(f"{name}: segment header is not valid ({exc})") from None
    return header, start + length


class SegmentReader:
    """Read-only view of one segment file (mmap), for scans and random reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._map: mmap.mmap | bytes = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.header, self.data_offset = parse_header(self._map, self.path.name)

    def __len__(self) -> int:
        return len(self._map)

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()

    def __enter__(self) -> "SegmentReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scan(self, start: int | None = None) -> tuple[Scan, Iterator[Record]]:
        """Iterate frames from `start` (default: the first record); `Scan` says how it ended."""
        info = Scan(self.header, self.data_offset, len(self._map))
        return info, self._frames(info, self.data_offset if start is None else start)

    def _frames(self, info: Scan, pos: int) -> Iterator[Record]:
        data, size = self._map, len(self._map)
        unpack, crc32, hdr = FRAME.unpack_from, zlib.crc32, FRAME.size
        while pos < size:
            if pos + hdr > size:
                info.end, info.end_offset = End.TORN, pos
                return
            length, crc = unpack(data, pos)
            end = pos + hdr + length
            if length == 0 or length > MAX_PAYLOAD:
                info.end = End.TORN if _all_zero(data, pos, size) else End.BROKEN
                info.end_offset = pos
                return
            if end > size:
                info.end, info.end_offset = End.TORN, pos
                return
            payload = bytes(data[pos + hdr:end])
            yield Record(pos, payload, crc32(payload) == crc)
            pos = end
        info.end, info.end_offset = End.CLEAN, pos


def pread_record(fd: int, offset: int, name: str) -> bytes:
    """Random read of one record by offset; pread works on the active segment as it grows."""
    head = os.pread(fd, FRAME.size, offset)
    if len(head) != FRAME.size:
        raise SegmentError(f"{name}: no frame at offset {offset}")
    length, crc = FRAME.unpack(head)
    payload = os.pread(fd, length, offset + FRAME.size)
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise SegmentError(f"{name}: frame at offset {offset} is damaged")
    return payload


class ActiveSegment:
    """The newest segment, open for appends. Not thread-safe: the log calls it under its append lock.

    Frames reach the OS with `os.write` only; the log's syncer makes them durable, using
    `take_unsynced` to learn what to fdatasync: the open segment, the segments rotated
    away since the last pass, and whether the directory has a new file.
    """

    def __init__(self, directory: Path, log_id: str) -> None:
        self.directory = directory
        self.log_id = log_id
        self.fd: int | None = None
        self.first = 0      # leaf index of its first record
        self.bytes = 0      # its length, header included
        self.records = 0
        self._retired: list[int] = []
        self._dir_dirty = False

    def adopt(self, first: int, records: int, end_offset: int) -> None:
        """Start from the newest segment found at open; then `reopen` it, or `rotate` past it."""
        self.first, self.records, self.bytes = first, records, end_offset

    def reopen(self) -> None:
        self.fd = os.open(self.directory / segment_name(self.first), os.O_WRONLY | os.O_APPEND)

    def rotate(self, first: int, key_id: str | None) -> None:
        """Continue in a new segment whose first record is leaf `first`."""
        path = self.directory / segment_name(first)
        if self.records == 0 and path.exists():
            path.unlink()  # an empty segment (e.g. right after a key change) is replaced, not kept
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        header = SegmentHeader(first, key_id, time.time(), self.log_id).encode()
        os.write(fd, header)
        if self.fd is not None:
            self._retired.append(self.fd)  # the syncer fsyncs and closes it; it may hold its number
        self.fd, self.first, self.bytes, self.records = fd, first, len(header), 0
        self._dir_dirty = True

    def append(self, data: bytes, pending: list[bytes] | None = None) -> int:
        """Place one frame and return its offset; with `pending`, it waits there for `write_pending`."""
        offset = self.bytes
        if pending is None:
            self._write(data, offset)
        else:
            pending.append(data)
        self.bytes = offset + len(data)
        self.records += 1
        return offset

    def write_pending(self, pending: list[bytes]) -> None:
        """One write for the frames `append` placed in `pending` (already counted in `bytes`)."""
        data = b"".join(pending)
        pending.clear()
        self._write(data, self.bytes - len(data))

    def _write(self, data: bytes, start: int) -> None:
        """os.write all of `data`, or cut the file back to `start` and raise (the segment stays well-formed)."""
        assert self.fd is not None
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError:
            if done:
                os.ftruncate(self.fd, start)
            raise

    def take_unsynced(self) -> tuple[int | None, list[int], bool]:
        """The open fd, the retired fds (now the caller's to fdatasync and close), whether the directory changed."""
        retired, self._retired = self._retired, []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        return self.fd, retired, dir_dirty

    def close(self) -> None:
        for fd in [self.fd, *self._retired]:
            if fd is not None:
                os.close(fd)
        self.fd, self._retired = None, []


def _all_zero(data: bytes | mmap.mmap, start: int, end: int) -> bool:
    return data[start:end].count(0) == end - start
