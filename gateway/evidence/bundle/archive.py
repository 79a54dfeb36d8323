"""The bundle's container: a `.tar.gz` written atomically with fixed metadata, read back without extracting.

Writing spools each member (in memory, spilling to a temp file when large) while hashing
it, so the manifest can list sha256 and size before the archive is assembled; the archive
goes to a temp file beside the target, is fsynced, then renamed over it.

Reading decompresses the whole stream first (so the gzip CRC and a truncated tail are
checked), keeps in memory only the members asked for and hashes the rest in chunks.
Unsafe members (links, devices, `..`, absolute paths, duplicates) are refused unread.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import BundleError

CHUNK = 1 << 20


class Spool:
    """A member's bytes (in memory, spilling to a temp file when large) with a running sha256."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=16 << 20)
        self.sha256 = hashlib.sha256()
        self.size = 0

    @classmethod
    def of(cls, data: bytes) -> Spool:
        spool = cls()
        spool.write(data)
        return spool

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def write_line(self, obj: object) -> None:
        self.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n")

    def close(self) -> None:
        self.file.close()


class _HashingWriter:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def write_archive(out_path: Path, members: list[tuple[str, Spool]], mtime: int) -> tuple[str, int]:
    """Write `members` in order as a .tar.gz at `out_path`, atomically; returns its sha256 (hex) and size."""
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=mtime) as gz:  # type: ignore[arg-type]
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    for name, spool in members:
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = spool.size, mtime, 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        spool.file.seek(0)
                        tar.addfile(info, spool.file)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(out_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems cannot fsync a directory
        pass
    return out.sha256.hexdigest(), out.size


@dataclass
class Member:
    size: int
    sha256: str
    data: bytes | None  # kept for the files that are parsed


def read_members(path: Path, keep: Collection[str], refuse: Callable[[str, str], None]) -> dict[str, Member]:
    """Every regular member by name, with the bytes of those named in `keep`.

    An unsafe member is passed to `refuse(where, reason)` and left unread. Raises
    BundleError when the file is not a readable .tar.gz at all.
    """
    members: dict[str, Member] = {}
    try:
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as tar_bytes:
            with gzip.open(path, "rb") as gz:
                shutil.copyfileobj(gz, tar_bytes, CHUNK)
            tar_bytes.seek(0)
            with tarfile.open(fileobj=tar_bytes, mode="r:") as tar:
                for info in tar:
                    _read_member(tar, info, members, keep, refuse)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{path}: not a readable .tar.gz bundle ({exc or type(exc).__name__})") from None
    return members


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, members: dict[str, Member], keep: Collection[str],
                 refuse: Callable[[str, str], None]) -> None:
    raw = info.name
    where = f"archive member {raw!r}"
    if info.isdir() and raw.rstrip("/") in ("", "."):
        return None  # the top directory of a bundle repacked with `tar -C dir .`
    name = raw.removeprefix("./")
    if "\\" in name or "\x00" in name or name.startswith("/") or not name:
        return refuse(where, "refused: absolute path, backslash or empty name")
    parts = name.rstrip("/").split("/") if info.isdir() else name.split("/")
    if ".." in parts:
        return refuse(where, "refused: the path climbs out of the bundle ('..')")
    if any(p in ("", ".") for p in parts):
        return refuse(where, "refused: empty or '.' path component")
    if info.isdir():
        return None  # a repacked bundle may hold directory entries: they carry no data
    if not info.isreg():
        kind = "a link" if info.issym() or info.islnk() else "a device, FIFO or other special file"
        return refuse(where, f"refused: {kind}, not a regular file")
    if name in members:
        return refuse(where, "refused: a second member with the same name")
    stream = tar.extractfile(info)
    assert stream is not None
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if name in keep:
            chunks.append(chunk)
    members[name] = Member(size, digest.hexdigest(), b"".join(chunks) if name in keep else None)
    return None
