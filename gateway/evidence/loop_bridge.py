"""Where the log's threads meet asyncio: records submitted from event loops, and waits for durability.

The log writes and fsyncs on its own threads so that no event loop ever waits on the disk;
these two hand-overs bring each outcome back to the loop that asked, as the result (or the
exception) of an asyncio future.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

Bodies = dict[str, bytes] | None
WriteBatch = Callable[[list[tuple[dict, Bodies]]], list["int | Exception"]]


class Submissions:
    """Records submitted from event loops, written by one thread in batches; each index goes back to its loop.

    The writer thread takes everything submitted since its last pass and hands it to
    `write_batch` (the log encodes it and gives it to the OS in one write). A write can
    stall for milliseconds while a group fsync commits; the loops never wait for it, and
    under load one system call and one wake-up of a loop serve many records.
    """

    BATCH = 1024

    def __init__(self, write_batch: WriteBatch) -> None:
        self._write_batch = write_batch
        self._queue: deque[tuple[dict, Bodies, asyncio.Future[int], asyncio.AbstractEventLoop]] = deque()
        self._wake = threading.Event()
        self._idle = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: dict, bodies: Bodies) -> asyncio.Future[int]:
        """Queue one record from the running event loop; the future resolves to its leaf index."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._queue.append((record, bodies, fut, loop))
        if self._idle:  # wake it only when it sleeps: under load it is already busy
            self._wake.set()
        return fut

    def stop(self) -> None:
        """Write everything submitted so far, then end the writer thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle = True
                if not self._queue and not self._stopping:  # look again after saying so: no lost wake-up
                    self._wake.wait(0.05)
                self._idle = False
                self._wake.clear()
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.BATCH:
                    batch.append(self._queue.popleft())
                self._write(batch)
            if self._stopping and not self._queue:
                return

    def _write(self, batch: list[tuple[dict, Bodies, asyncio.Future[int], asyncio.AbstractEventLoop]]) -> None:
        try:
            outcomes: list[int | BaseException] = list(self._write_batch([(r, b) for r, b, _, _ in batch]))
        except BaseException as exc:  # the log failed or closed: nobody in this batch was written
            outcomes = [exc] * len(batch)
        settle([(loop, fut, outcome) for (_, _, fut, loop), outcome in zip(batch, outcomes)])


class DurableSize:
    """How many leaves a group fsync has made durable, and the event loops waiting for more."""

    def __init__(self) -> None:
        self.size = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def waiter(self, idx: int) -> asyncio.Future[None] | None:
        """On the waiting loop: a future resolved once leaf `idx` is durable, or None if it already is."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if idx < self.size:
                return None
            self._waiters.append((idx, loop, fut))
        return fut

    def advance(self, size: int) -> None:
        """`size` leaves are durable now: wake whoever waits for one of them."""
        with self._lock:
            self.size = max(self.size, size)
            ready = [w for w in self._waiters if w[0] < size]
            self._waiters = [w for w in self._waiters if w[0] >= size]
        settle([(loop, fut, None) for _, loop, fut in ready])

    def fail(self, exc: BaseException) -> None:
        """Nothing more will become durable: every waiter gets `exc`."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        settle([(loop, fut, exc) for _, loop, fut in waiters])


def settle(outcomes: list[tuple[asyncio.AbstractEventLoop, asyncio.Future, object]]) -> None:
    """From any thread: resolve each future on its own loop, with the outcome as result or exception."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for loop, fut, outcome in outcomes:
        by_loop.setdefault(loop, []).append((fut, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _resolve(settled: list[tuple[asyncio.Future, object]]) -> None:
    for fut, outcome in settled:
        if fut.done():
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
