"""Observe: what every finished exchange leaves behind in memory (metrics, recent ids, the access log).

Each observer has one method, `observe(ex)`, called once per exchange after the client
got its answer (or went away). Nothing here waits on a store or a disk.
"""

from __future__ import annotations

import logging
from collections import deque
from time import perf_counter

from gateway.metrics import Metrics
from gateway.proxy.exchange import Exchange


def final_status(ex: Exchange) -> int:
    """What the exchange ended with: its status, 499 when the client went away first; never 0."""
    return 499 if ex.disconnected else ex.status or 500  # 0: nothing was sent, so the server answered 500


class TrafficMetrics:
    """Requests, durations (to the headers, to the end), the gateway's own overhead, upstream failures, tokens."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def observe(self, ex: Exchange) -> None:
        now = perf_counter()
        to_end = now - ex.started
        to_headers = (ex.headers_at if ex.headers_at is not None else now) - ex.started
        overhead = ex.overhead if ex.overhead is not None else to_headers - ex.upstream_seconds - ex.waiting_seconds
        model, version = ex.model or "-", ex.version or "-"
        self.metrics.observe(model, version, final_status(ex), ex.route, to_headers, overhead, to_end)
        if ex.usage is not None or ex.first_token is not None:
            self.metrics.llm(model, version, ex.usage, ex.first_token)
        if ex.upstream_error is not None:
            self.metrics.upstream_error(model, version, ex.upstream_error)
        elif ex.response_status >= 500:
            self.metrics.upstream_error(model, version, "5xx")


class RecentRequests:
    """The last request ids each version served (a switch's snapshot names them)."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self._ids: dict[tuple[str, str], deque[str]] = {}

    def observe(self, ex: Exchange) -> None:
        if not ex.version:
            return
        recent = self._ids.get((ex.model, ex.version))
        if recent is None:
            recent = self._ids[(ex.model, ex.version)] = deque(maxlen=self.keep)
        recent.append(ex.request_id.decode())

    def of(self, model: str, version: str) -> list[str]:
        return list(self._ids.get((model, version), ()))


class AccessLog:
    """One JSON line per request, with the caller's token id (never a token)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def observe(self, ex: Exchange) -> None:
        self.log.info(
            "request",
            extra={
                "request_id": ex.request_id.decode(),
                "caller": ex.caller.id if ex.caller else None,
                "model": ex.model or None,
                "version": ex.version or None,
                "oversight_level": ex.level if ex.level >= 0 else None,
                "route": ex.route,
                "status": final_status(ex),
                "ms": round((perf_counter() - ex.started) * 1000, 3),
                "ticket": ex.ticket,
                "error": ex.error_type,
            },
        )
