"""Work a replica does in the background, which must outlive any one failure and end at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.store import StoreUnavailable

log = logging.getLogger("gateway")


async def every(seconds: float, work: Callable[[], Awaitable[object]], what: str, log: logging.Logger) -> None:
    """Run `work` every `seconds` forever: a store outage is a warning, anything else a logged error."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except StoreUnavailable as exc:
            log.warning("%s skipped: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)


class Background:
    """One-off background work the gateway owns: failures are logged, whatever is left is cancelled at stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %s", task.exception())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
