"""Several endpoints of one version (replicas of one inference server), balanced and failed over.

A request goes to the endpoint with the fewest outstanding requests (ties in turn). An
endpoint whose connect fails or is refused is ejected at once and probed every
`probe_interval` with a TCP connect; the first probe that connects puts it back. A
request that never reached an endpoint (no connection was made) is sent to the next one;
a request that may have reached one is never sent again, whatever happened to it.

All endpoints share one `ConnectionBudget`: `limits.upstream_connections` bounds the
version, not each replica of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.upstream.connection import UpstreamError, UpstreamResponse
from gateway.upstream.pool import ConnectionBudget, UpstreamPool

log = logging.getLogger("gateway.upstream")


@dataclass(eq=False, slots=True)
class Endpoint:
    """One upstream URL of a version, and what this replica has seen of it."""

    url: str
    pool: UpstreamPool
    outstanding: int = 0
    requests: int = 0
    connect_failures: int = 0
    ejections: int = 0
    ejected_at: float | None = None  # None: in rotation

    @property
    def up(self) -> bool:
        return self.ejected_at is None


class Endpoints:
    """The endpoints of one version, with the pool interface (`request`, `close`)."""

    def __init__(self, urls: list[str], make_pool: Callable[[str, ConnectionBudget], UpstreamPool], *,
                 budget: ConnectionBudget, probe_interval: float = 2.0, connect_timeout: float = 5.0) -> None:
        self.budget = budget
        self.endpoints = [Endpoint(url, make_pool(url, budget)) for url in urls]
        self.probe_interval = probe_interval
        self.connect_timeout = connect_timeout
        self._turn = 0
        self._prober: asyncio.Task[None] | None = None

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes] = b"") -> UpstreamResponse:
        tried: list[Endpoint] = []
        while True:
            endpoint = self._pick(tried)
            endpoint.outstanding += 1
            endpoint.requests += 1
            try:
                return await endpoint.pool.request(method, target, headers, body, done=_finisher(endpoint))
            except UpstreamError as exc:
                endpoint.outstanding -= 1
                if exc.reached or exc.kind == "busy":
                    raise
                self._eject(endpoint, exc)
                tried.append(endpoint)
                if len(tried) == len(self.endpoints):
                    raise
            except BaseException:
                endpoint.outstanding -= 1
                raise

    def _pick(self, tried: list[Endpoint]) -> Endpoint:
        """The endpoint in rotation with the fewest outstanding requests; if none is up, the longest ejected."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        count = len(endpoints)
        self._turn = (self._turn + 1) % count
        best: Endpoint | None = None
        for i in range(count):
            candidate = endpoints[(self._turn + i) % count]
            if candidate.ejected_at is None and candidate not in tried and (
                    best is None or candidate.outstanding < best.outstanding):
                best = candidate
        if best is not None:
            return best
        waiting = [e for e in endpoints if e not in tried]  # all ejected: try one rather than refuse
        return min(waiting, key=lambda e: e.ejected_at or 0.0)

    def _eject(self, endpoint: Endpoint, exc: UpstreamError) -> None:
        endpoint.connect_failures += 1
        if endpoint.ejected_at is not None or len(self.endpoints) == 1:
            return
        endpoint.ejected_at = time.monotonic()
        endpoint.ejections += 1
        log.warning("upstream endpoint %s ejected: %s; probing it every %gs", endpoint.url, exc, self.probe_interval)
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """While an endpoint is out, try to connect to it every probe interval; one that connects is back."""
        while any(e.ejected_at is not None for e in self.endpoints):
            await asyncio.sleep(self.probe_interval)
            for endpoint in self.endpoints:
                if endpoint.ejected_at is not None and await self._connects(endpoint):
                    log.warning("upstream endpoint %s is back after %.1fs", endpoint.url,
                                time.monotonic() - endpoint.ejected_at)
                    endpoint.ejected_at = None

    async def _connects(self, endpoint: Endpoint) -> bool:
        pool = endpoint.pool
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(pool.host, pool.port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        for endpoint in self.endpoints:
            endpoint.pool.close()


def _finisher(endpoint: Endpoint) -> Callable[[], None]:
    def done() -> None:
        endpoint.outstanding -= 1
    return done
