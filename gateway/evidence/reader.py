"""`LogReader`: a read-only view of a log that another process writes.

A fleet keeps one log per writer (as Certificate Transparency runs many logs) in slots of
one shared directory; any replica answers for all of them by reading the others' slots.
A reader never locks, repairs or writes anything there. It trusts only what the writer's
latest signed checkpoint covers: the writer fsyncs the tree files and the index before
it signs the note that vouches for them, so everything below the checkpoint's size is
complete on disk, and records past it are left out until the next checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Iterator, Mapping

from .checkpoints import Checkpoint, read_log
from .crypto import BodyCipher, load_public_keys
from .errors import EvidenceLogError
from .index import Index
from .layout import FORMAT
from .segments import pread_record, segment_name
from .tree import MerkleTree, TreeFiles


class LogReader:
    """Use `LogReader.open(directory)`; call `refresh()` to follow the writer's newer checkpoints."""

    def __init__(self, directory: Path, origin: str, cipher: BodyCipher) -> None:
        self.directory = directory
        self.origin = origin
        self._cipher = cipher
        self._files = TreeFiles(directory / "tree", writable=False)
        self._index: Index | None = None
        self._checkpoint: Checkpoint | None = None
        self._tree: MerkleTree | None = None
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._seen_notes: tuple[int, int, int] | None = None  # checkpoints.log (inode, size, mtime) last read

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, encryption_key: bytes | None = None, key_id: str | None = None,
             decryption_keys: Mapping[str, bytes] | None = None) -> "LogReader":
        """The keys open bodies, as for `EvidenceLog.open`; raises EvidenceLogError when `directory` is not a log."""
        d = Path(directory)
        try:
            meta = json.loads((d / "log.json").read_text())
        except (OSError, ValueError) as exc:
            raise EvidenceLogError(f"{d} is not a readable evidence log ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("origin"), str):
            raise EvidenceLogError(f"{d} is not an evidence log ({d / 'log.json'} is not its identity)")
        reader = cls(d, meta["origin"], BodyCipher(encryption_key, key_id, decryption_keys))
        reader.refresh()
        return reader

    # ---------------------------------------------------------------- following the writer

    def refresh(self) -> Checkpoint | None:
        """Take up the writer's latest signed checkpoint; returns it (None while the log has none)."""
        path = self.directory / "checkpoints.log"
        try:
            st = path.stat()
        except FileNotFoundError:
            return self._checkpoint
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen_notes:
            return self._checkpoint  # the writer appended no note since
        if self._seen_notes is not None and (st.st_ino != self._seen_notes[0] or st.st_size < self._seen_notes[1]):
            self._reopen()  # the files were replaced, not appended to: whatever was read before is gone
        self._seen_notes = seen
        entries, _, _ = read_log(path)
        latest = next((e.checkpoint for e in reversed(entries) if e.checkpoint is not None), None)
        with self._lock:
            if latest is not None and latest != self._checkpoint:
                self._tree = MerkleTree(self._files, latest.size) if latest.size else None
                self._checkpoint = latest
            return self._checkpoint

    def writer_alive(self) -> bool:
        """True while a process has the log open for writing (holds its lock); False once it is gone."""
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the lock if this call took it
        return False

    def stored_bytes(self) -> int:
        """The segments' total size: it changes whenever the writer appended anything."""
        return sum(p.stat().st_size for p in (self.directory / "segments").glob("*.seg"))

    def latest_checkpoint(self) -> Checkpoint | None:
        return self._checkpoint

    def _reopen(self) -> None:
        """Drop every open file: an append-only log whose files were replaced is read afresh."""
        self.close()
        self._files = TreeFiles(self.directory / "tree", writable=False)
        self._index = None
        self._checkpoint = None
        self._tree = None

    @property
    def size(self) -> int:
        """Records the latest checkpoint covers: the only ones this reader reads or proves."""
        return self._checkpoint.size if self._checkpoint is not None else 0

    def checkpoints(self) -> list[Checkpoint]:
        entries, _, _ = read_log(self.directory / "checkpoints.log")
        return [e.checkpoint for e in entries if e.checkpoint is not None]

    def checkpoint_keys(self) -> list:
        """The public keys that have signed this log's checkpoints (its checkpoint-keys.pem)."""
        try:
            return load_public_keys((self.directory / "checkpoint-keys.pem").read_bytes())
        except (OSError, ValueError):
            return []

    # ---------------------------------------------------------------- records

    def find(self, request_id: str) -> list[int]:
        size = self.size
        return [i for i in self._rows().find(request_id) if i < size]

    def find_uncovered(self, request_id: str) -> list[int]:
        """Records of `request_id` the writer has indexed but no checkpoint covers yet (the next one will)."""
        size = self.size
        return [i for i in self._rows().find(request_id) if i >= size]

    def select_uncovered(self, since: float | None = None, until: float | None = None,
                         model: str | None = None) -> list[int]:
        """Records of the window the writer has indexed but no checkpoint covers yet."""
        size = self.size
        return [i for i in self._rows().select(since, until, model) if i >= size]

    def select(self, since: float | None = None, until: float | None = None, model: str | None = None) -> Iterator[int]:
        size = self.size
        return iter([i for i in self._rows().select(since, until, model) if i < size])

    def read_leaf(self, idx: int) -> bytes:
        if not 0 <= idx < self.size:
            raise IndexError(f"leaf {idx} is not covered by the latest checkpoint of {self.origin} (size {self.size})")
        where = self._rows().locate(idx)
        if where is None:
            raise KeyError(f"record {idx} was removed by retention")
        seg, off = where
        with self._lock:
            fd = self._fds.get(seg)
            if fd is None:
                fd = self._fds[seg] = os.open(self.directory / "segments" / segment_name(seg), os.O_RDONLY)
        return pread_record(fd, off, segment_name(seg))

    def get(self, idx: int) -> dict:
        return self._cipher.open_record(idx, self.read_leaf(idx))

    def _rows(self) -> Index:
        if self._index is None:
            self._index = Index(self.directory / "index.sqlite", readonly=True)
        return self._index

    # ---------------------------------------------------------------- proofs

    def _merkle(self, size: int) -> MerkleTree:
        with self._lock:
            tree = self._tree
        if tree is None or not 0 < size <= tree.size:
            raise ValueError(f"tree size {size} is outside 1..{self.size} (the latest checkpoint of {self.origin})")
        return tree

    def root(self, tree_size: int | None = None) -> bytes:
        size = self.size if tree_size is None else tree_size
        return self._merkle(size).root(size)

    def inclusion_proof(self, idx: int, tree_size: int) -> list[bytes]:
        return self._merkle(tree_size).inclusion_proof(idx, tree_size)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        return self._merkle(n).consistency_proof(m, n)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        self._files.close()
        if self._index is not None:
            self._index.close()
