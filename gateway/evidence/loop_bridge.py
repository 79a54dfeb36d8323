"""Where the log's threads meet asyncio: records submitted from event loops, and waits for durability.

Records are written on the loop that submits them, one write per loop iteration; the group
fsync runs on the log's own thread so that no event loop ever waits on the disk, and its
outcome comes back to each waiting loop as the result (or the exception) of an asyncio future.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

Bodies = dict[str, bytes] | None
WriteBatch = Callable[[list[tuple[dict, Bodies]]], list["int | Exception"]]


class Submissions:
    """Records submitted from event loops, written in one batch per loop iteration; each index resolves on its loop.

    The first record a loop submits in an iteration schedules a write for the end of that
    iteration (`call_soon`); every record submitted before it runs joins the batch, which the
    log encodes and gives to the OS in one write, on the loop's own thread. A write to the page
    cache does not wait for the disk (the group fsync runs on the log's sync thread), so the
    loop never waits on the disk; and nothing crosses a thread: no wake-up and no hand-over of
    the interpreter per record, which on a busy core costs more than the write itself.
    """

    def __init__(self, write_batch: WriteBatch) -> None:
        self._write_batch = write_batch
        self._batches: dict[asyncio.AbstractEventLoop, list[tuple[dict, Bodies, asyncio.Future[int]]]] = {}
        self._lock = threading.Lock()  # loops on several threads may share one log
        self._stopping = False

    def start(self) -> None:
        pass  # nothing runs between batches

    def submit(self, record: dict, bodies: Bodies) -> asyncio.Future[int]:
        """Queue one record from the running event loop; the future resolves to its leaf index."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        with self._lock:
            batch = self._batches.get(loop)
            if batch is None:
                batch = self._batches[loop] = []
                loop.call_soon(self._write, loop)
            batch.append((record, bodies, fut))
        return fut

    def stop(self) -> None:
        """Write everything submitted so far (from any thread); nothing is accepted after."""
        self._stopping = True
        with self._lock:
            batches, self._batches = self._batches, {}
        for loop, batch in batches.items():
            outcomes = self._outcomes(batch)
            settle([(loop, fut, outcome) for (_, _, fut), outcome in zip(batch, outcomes)])

    def _write(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._batches.pop(loop, None)
        if batch:
            _resolve([(fut, outcome) for (_, _, fut), outcome in zip(batch, self._outcomes(batch))])

    def _outcomes(self, batch: list[tuple[dict, Bodies, asyncio.Future[int]]]) -> list[int | BaseException]:
        try:
            return list(self._write_batch([(r, b) for r, b, _ in batch]))
        except BaseException as exc:  # the log failed or closed: nobody in this batch was written
            return [exc] * len(batch)


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
