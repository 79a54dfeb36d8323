"""Work a replica repeats in the background, which must outlive any one failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.store import StoreUnavailable


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
