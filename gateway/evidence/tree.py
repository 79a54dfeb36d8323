"""The Merkle tree on disk: one append-only hash file per level, like CT tiles.

Level k's file holds, in order, the hash of every complete aligned subtree of
2**k leaves (level 0 = leaf hashes). That is about 64 bytes per record and lets
any MTH(D[a:b]) that appears in an RFC 9162 proof be read with O(log n) preads
instead of rehashing leaves. Appends go through a `Frontier` (amortised O(1));
new nodes sit in memory until `flush()`, which the log's background thread
calls, so the request path never writes these files itself.

The files are a cache of what the segments imply: anything past the latest
signed checkpoint is distrusted and rebuilt at open (see `EvidenceLog`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .merkle import HASH_SIZE, EMPTY_ROOT, Frontier, consistency_path, decompose, inclusion_path, node_hash, split_point

MAX_LEVELS = 64


class TreeFiles:
    """Positional access to the per-level hash files `L00` .. `L63`."""

    def __init__(self, directory: Path, *, writable: bool = True) -> None:
        self.directory = Path(directory)
        self.writable = writable
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: dict[int, int] = {}
        self._open_lock = threading.Lock()

    def path(self, level: int) -> Path:
        return self.directory / f"L{level:02d}"

    def _fd(self, level: int) -> int | None:
        fd = self._fds.get(level)
        if fd is None:
            with self._open_lock:
                fd = self._fds.get(level)
                if fd is None:
                    flags = os.O_RDWR | os.O_CREAT if self.writable else os.O_RDONLY
                    try:
                        fd = os.open(self.path(level), flags, 0o640)
                    except FileNotFoundError:
                        return None
                    self._fds[level] = fd
        return fd

    def count(self, level: int) -> int:
        """Whole hashes stored at `level` (a torn trailing fragment does not count)."""
        try:
            return self.path(level).stat().st_size // HASH_SIZE
        except FileNotFoundError:
            return 0

    def read(self, level: int, index: int) -> bytes:
        fd = self._fd(level)
        data = os.pread(fd, HASH_SIZE, index * HASH_SIZE) if fd is not None else b""
        if len(data) != HASH_SIZE:
            raise LookupError(f"tree node {level}/{index} is not stored")
        return data

    def read_range(self, level: int, index: int, count: int) -> bytes:
        fd = self._fd(level)
        return os.pread(fd, HASH_SIZE * count, index * HASH_SIZE) if fd is not None else b""

    def write(self, level: int, index: int, hashes: list[bytes]) -> None:
        data = b"".join(hashes)
        fd = self._fd(level)
        assert fd is not None
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], index * HASH_SIZE + written)

    def truncate(self, level: int, count: int) -> None:
        try:
            size = self.path(level).stat().st_size
        except FileNotFoundError:
            return
        if size > count * HASH_SIZE:
            os.truncate(self.path(level), count * HASH_SIZE)

    def levels(self) -> int:
        """How many level files exist (a contiguous run from L00)."""
        n = 0
        while n < MAX_LEVELS and self.path(n).exists():
            n += 1
        return n

    def fsync(self) -> None:
        for fd in list(self._fds.values()):
            os.fsync(fd)

    def close(self) -> None:
        with self._open_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class MerkleTree:
    """An append-only RFC 9162 tree whose nodes live in `TreeFiles` plus a small write buffer.

    Not thread-safe: the log serialises access with its own lock.
    """

    def __init__(self, files: TreeFiles, size: int = 0) -> None:
        """Resume at `size`: the stored levels must already hold every node below it."""
        self.files = files
        self._flushed = [size >> k for k in range(MAX_LEVELS)]
        self._buffer: list[list[bytes]] = [[] for _ in range(MAX_LEVELS)]
        nodes = [(lvl, files.read(lvl, idx)) for lvl, idx in decompose(0, size)]
        self.frontier = Frontier(size, nodes)

    @property
    def size(self) -> int:
        return self.frontier.size

    def append_leaf(self, digest: bytes) -> None:
        """Record one leaf hash; O(1) amortised, touches memory only."""
        self._buffer[0].append(digest)
        self.frontier.append(0, digest, self._emit)

    def _emit(self, level: int, index: int, digest: bytes) -> None:
        self._buffer[level].append(digest)

    def root(self, size: int | None = None) -> bytes:
        if size is None or size == self.size:
            return self.frontier.root()
        if size == 0:
            return EMPTY_ROOT
        return self.subtree(0, size)

    def node(self, level: int, index: int) -> bytes:
        base = self._flushed[level]
        if index >= base:
            return self._buffer[level][index - base]
        return self.files.read(level, index)

    def subtree(self, start: int, n: int) -> bytes:
        """MTH(D[start:start+n]) from stored perfect subtrees; O(log n) reads."""
        if start + n > self.size or n <= 0:
            raise ValueError(f"subtree [{start}, {start + n}) is not in a tree of size {self.size}")
        level = n.bit_length() - 1
        if n == 1 << level and start % n == 0:
            return self.node(level, start >> level)
        k = split_point(n)
        return node_hash(self.subtree(start, k), self.subtree(start + k, n - k))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        return inclusion_path(index, size, self.subtree)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        self._check_size(n)
        return consistency_path(m, n, self.subtree)

    def _check_size(self, size: int) -> None:
        if not 0 < size <= self.size:
            raise ValueError(f"tree size {size} is outside 1..{self.size}")

    def flush(self, limit: int | None = None) -> None:
        """Write buffered nodes below leaf `limit` (default: all) to their level files."""
        writes = self.unflushed(limit)
        for level, start, hashes in writes:
            self.files.write(level, start, hashes)
        self.mark_flushed(writes)

    def unflushed(self, limit: int | None = None) -> list[tuple[int, int, list[bytes]]]:
        """(level, first index, hashes) still only in memory and below leaf `limit`.

        Split from `mark_flushed` so the log can do the writes without holding
        the lock appends need; it passes its durable size as `limit` so the
        files never hold a hash of a record a power cut could still take back.
        """
        out = []
        for level, buf in enumerate(self._buffer):
            n = len(buf) if limit is None else min(len(buf), (limit >> level) - self._flushed[level])
            if n <= 0:
                break  # a parent is only ever buffered together with its right child
            out.append((level, self._flushed[level], buf[:n]))
        return out

    def mark_flushed(self, writes: list[tuple[int, int, list[bytes]]]) -> None:
        for level, start, hashes in writes:
            assert start == self._flushed[level], "tree flushes must not overlap"
            self._flushed[level] += len(hashes)
            del self._buffer[level][: len(hashes)]


def stored_leaves(files: TreeFiles) -> int:
    """Leaf hashes on disk, ignoring an all-zero tail a filesystem may expose after power loss."""
    n = files.count(0)
    while n and files.read(0, n - 1) == bytes(HASH_SIZE):
        n -= 1
    return n


def repair_levels(files: TreeFiles, size: int) -> None:
    """Make level k hold exactly size >> k nodes, recomputing missing ones from level k-1.

    Level 0 must already hold `size` leaf hashes. Called at open, after a crash
    may have left the upper levels behind the leaves (they are flushed together
    but not atomically).
    """
    files.truncate(0, size)
    for level in range(1, MAX_LEVELS):
        want = size >> level
        have = min(files.count(level), want)
        files.truncate(level, have)
        while have < want:
            step = min(want - have, _REPAIR_CHUNK)
            children = files.read_range(level - 1, 2 * have, 2 * step)
            parents = [
                node_hash(children[i:i + HASH_SIZE], children[i + HASH_SIZE:i + 2 * HASH_SIZE])
                for i in range(0, len(children), 2 * HASH_SIZE)
            ]
            files.write(level, have, parents)
            have += step


_REPAIR_CHUNK = 1 << 15
