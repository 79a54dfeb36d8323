"""Parallel, constant-memory hashing of whole files and file shards.

Why threads and not processes: hashlib and blake3 release the GIL while digesting
a large buffer, and `readinto` releases it while reading, so N threads keep N
cores busy with no pickling or process start-up. Why `readinto`: each worker
thread owns one buffer that it reuses for every chunk of every file, so memory is
`workers x CHUNK_SIZE` whatever the size of the model. Why that buffer is an
anonymous map: it starts on a page boundary. A `bytearray` of this size starts 16
bytes past one (the allocator's header), and the kernel's copy from the page cache
into it measured about 35 % slower (`scripts/bench_hash.py`: 1.5 against 2.3 GB/s
on two cores).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from gateway.integrity.errors import IntegrityInputError, ModelReadError

ALGORITHMS = ("sha256", "blake2b", "blake3")
DIGEST_SIZES = {"sha256": 32, "blake2b": 64, "blake3": 32}
CHUNK_SIZE = 512 << 10  # small enough to stay in L2 between the read and the hash

_local = threading.local()


class _Hasher(Protocol):
    def update(self, data: memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class HashTask:
    """One unit of work: bytes [start, end) of `path` (end None: to end of file)."""

    path: Path
    name: str  # the path relative to the model, for messages
    start: int = 0
    end: int | None = None


def check_algorithm(name: str) -> str:
    """Return `name` if this module can hash with it, else raise an input error."""
    if name not in ALGORITHMS:
        raise IntegrityInputError(f"unsupported hash algorithm {name!r}; use one of {', '.join(ALGORITHMS)}")
    return name


def new_hasher(algorithm: str) -> _Hasher:
    """A fresh streaming hasher. blake3 runs single-threaded: the pool parallelises."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake2b":
        return hashlib.blake2b()  # 64-byte digest, as the reference tool writes it
    if algorithm == "blake3":
        return blake3.blake3(max_threads=1)
    raise IntegrityInputError(f"unsupported hash algorithm {algorithm!r}")


def _buffer() -> memoryview:
    """This thread's reusable read buffer, page-aligned (see the module's docstring)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(mmap.mmap(-1, CHUNK_SIZE))
    return buf


def hash_task(task: HashTask, algorithm: str) -> bytes:
    """Digest of one file or shard, read in chunks into this thread's buffer."""
    hasher = new_hasher(algorithm)
    buf = _buffer()
    remaining = None if task.end is None else task.end - task.start
    try:
        with open(task.path, "rb", buffering=0) as f:
            if task.start:
                f.seek(task.start)
            while remaining is None or remaining > 0:
                want = len(buf) if remaining is None else min(len(buf), remaining)
                n = f.readinto(buf[:want])
                if not n:
                    break
                hasher.update(buf[:n])
                if remaining is not None:
                    remaining -= n
    except OSError as exc:
        raise ModelReadError(f"cannot read {task.name}: {exc.strerror or exc}") from None
    if remaining:
        raise ModelReadError(f"{task.name} shrank while it was being hashed")
    return hasher.digest()


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, as in containers), not all the host's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _size_hint(task: HashTask) -> int:
    """Bytes a task will read, to start the longest tasks first."""
    if task.end is not None:
        return task.end - task.start
    try:
        return os.stat(task.path).st_size
    except OSError:
        return 0


def hash_all(tasks: Sequence[HashTask], algorithm: str, *, workers: int | None = None) -> list[bytes]:
    """Digests of `tasks`, in order, computed by a pool of threads.

    Longest tasks are submitted first so one big file does not start last and
    leave the other cores idle. The first read error cancels the rest.
    """
    check_algorithm(algorithm)
    workers = max(1, min(workers or usable_cpus(), len(tasks) or 1))
    order = sorted(range(len(tasks)), key=lambda i: -_size_hint(tasks[i]))
    results: list[bytes] = [b""] * len(tasks)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        futures = {pool.submit(hash_task, tasks[i], algorithm): i for i in order}
        _raise_first_error(futures)
    for fut, i in futures.items():
        results[i] = fut.result()
    return results


def _raise_first_error(futures: dict[Future[bytes], int]) -> None:
    """Wait for all; on the first failure cancel what has not started and raise it."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    for fut in pending:
        fut.cancel()
    for fut in done:
        exc = fut.exception()
        if exc is not None:
            raise exc
