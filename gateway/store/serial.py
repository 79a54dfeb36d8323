"""One thread that owns the embedded store's SQLite connection: calls run on it one at a time, in order.

The event loop awaits `run(fn, *args)` and never blocks on disk. Between calls, at most
every `idle_every` seconds, the thread runs an idle task of its own — for workers sharing
the store, the check whether another one committed — which costs the event loop nothing
unless it finds something to hand over (`loop.call_soon_threadsafe`). An executor woken by
a timer on the loop would cost a loop wakeup and two thread handoffs per check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class SerialThread:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._lock = threading.Lock()
        self._started = self._stopped = False
        self._idle: Callable[[], None] | None = None
        self._idle_every = 0.0

    def when_idle(self, task: Callable[[], None] | None, every: float = 0.0) -> None:
        """Run `task` on this thread between calls, at most every `every` seconds (None: stop)."""
        self._idle, self._idle_every = task, every
        self._jobs.put(None if task is None else (None, _nothing, ()))  # wake the thread to start or stop the schedule

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the store's thread has stopped")
            if not self._started:
                self._started = True
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Finish the calls queued so far, then end the thread."""
        with self._lock:
            self._stopped = True
            started = self._started
        if started:
            self._idle = None
            self._jobs.put(None)
            self._thread.join()

    def _serve(self) -> None:
        last_idle = time.monotonic()
        while True:
            idle = self._idle
            timeout = None if idle is None else max(0.0, last_idle + self._idle_every - time.monotonic())
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                job = (None, _nothing, ())
            if job is None:
                if self._stopped:
                    return
                continue
            future, fn, args = job
            if future is not None and future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the awaiting caller
                    future.set_exception(exc)
            idle = self._idle
            if idle is not None and time.monotonic() - last_idle >= self._idle_every:
                last_idle = time.monotonic()
                idle()


def _nothing() -> None:
    return None
