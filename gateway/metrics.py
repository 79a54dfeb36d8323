"""Prometheus metrics, with the labelled children cached so the request path pays one dict lookup.

Per request (in memory, by the data plane's observer): answers, durations to the answer's
headers and to its end, the gateway's own overhead, upstream failures, tokens (`usage`)
and time to first token. At scrape time (`refresh`, then the collectors): requests in
flight, the review queue, integrity, open incidents and the control state, read from
memory or from one cached store read per source (at most one a second), never per request.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from typing import Any

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.request_metrics import RequestMetrics

log = logging.getLogger("gateway.metrics")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 900.0, 3600.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# the OpenTelemetry GenAI conventions' advised boundaries
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_DECISION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)

TICKET_KINDS = ("hold", "human", "sample", "appeal")
INTEGRITY_STATUSES = ("verified", "failed", "pending", "unsigned")
INCIDENT_SEVERITIES = ("low", "medium", "high", "critical")
UNRESOLVED = ("open", "acknowledged")
SCRAPE_CACHE_SECONDS = 1.0  # one store read per source per second, however often /metrics is scraped

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _package_version() -> str:
    try:
        return metadata.version("oversight-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.traffic = RequestMetrics(latency=_LATENCY_BUCKETS, overhead=_OVERHEAD_BUCKETS, tokens=_TOKEN_BUCKETS,
                                      ttft=_TTFT_BUCKETS)
        self.registry.register(self.traffic)
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures (connect, reset, timeout, protocol, 5xx), by model and version.",
            ["model", "version", "kind"],
            registry=self.registry,
        )
        self.level = Gauge(
            "gateway_oversight_level",
            "Effective oversight level per model on this replica.",
            ["model"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "gateway_review_decisions_total",
            "Tickets decided by a reviewer on this replica, by model, kind and action (or verdict).",
            ["model", "kind", "action"],
            registry=self.registry,
        )
        self.decision_time = Histogram(
            "gateway_review_decision_seconds",
            "Time from a ticket's creation to its human decision, by model and kind.",
            ["model", "kind"],
            buckets=_DECISION_BUCKETS,
            registry=self.registry,
        )
        self.expired = Counter(
            "gateway_review_expired_total",
            "Tickets closed by their deadline on this replica (review.on_expiry), by model, kind and action.",
            ["model", "kind", "action"],
            registry=self.registry,
        )
        self.incidents_opened = Counter(
            "gateway_incidents_opened_total",
            "Incidents this replica opened, by category, severity and trigger.",
            ["category", "severity", "trigger"],
            registry=self.registry,
        )
        build = Gauge("gateway_build_info", "The gateway's version and Python; always 1.",
                      ["version", "python_version"], registry=self.registry)
        build.labels(_package_version(), platform.python_version()).set(1)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    # the request path --------------------------------------------------------------------
    def observe(self, model: str, version: str, status: int, route: str, seconds: float, overhead: float,
                completed: float | None = None) -> None:
        """One answer: `seconds` to its headers, `completed` to its end (default: the same), the gateway's `overhead`."""
        self.traffic.answered(model, version, status, route, seconds, overhead if overhead > 0 else 0.0,
                              seconds if completed is None else completed)

    def llm(self, model: str, version: str, usage: tuple[int, int] | None, first_token: float | None) -> None:
        """An OpenAI answer's tokens (input, output) and a stream's time to its first chunk."""
        if usage is not None:
            self.traffic.used(model, version, usage[0], usage[1])
        if first_token is not None:
            self.traffic.ttft.of(model, version).add(first_token)

    def upstream_error(self, model: str, version: str, kind: str) -> None:
        self.upstream_errors.labels(model, version, kind).inc()

    # the oversight's events (memory only) ---------------------------------------------------
    def ticket_closed(self, ticket: Any) -> None:
        """A ticket decided or expired on this replica (`ReviewQueue.on_closed`)."""
        decision = ticket.decision
        action = (decision.action or decision.verdict or "-") if decision is not None else "-"
        if ticket.status == "expired":
            self.expired.labels(ticket.model, ticket.kind, action).inc()
            return
        self.decisions.labels(ticket.model, ticket.kind, action).inc()
        if decision is not None:
            self.decision_time.labels(ticket.model, ticket.kind).observe(max(0.0, decision.at - ticket.created_at))

    def incident_opened(self, incident: Any) -> None:
        self.incidents_opened.labels(incident.category, incident.severity, incident.trigger).inc()

    # figures for other parts ---------------------------------------------------------------
    def summary(self, model: str, version: str) -> dict:
        """This replica's figures for one version: answers by status, upstream errors, mean latency (to headers)."""
        mine = {"model": model, "version": version}
        statuses = self.traffic.answers_by_status(model, version)
        errors = sum(s.value for s in _samples(self.upstream_errors, "_total", mine))
        total, count = self.traffic.latency_totals(model, version)
        answered = sum(statuses.values())
        return {"answers_by_status": statuses, "upstream_errors": errors,
                "error_rate": round(errors / answered, 6) if answered else None,
                "mean_latency_ms": round(total / count * 1000, 3) if count else None}

    # scrape time -----------------------------------------------------------------------------
    def watch_endpoints(self, endpoints: Callable[[], Iterable[tuple[str, str, Any]]]) -> None:
        """Per-endpoint figures, read from the balancers' own counters when scraped (nothing per request)."""
        self.registry.register(_EndpointCollector(endpoints))

    def watch_oversight(self, *, state: Any, inflight: Any, integrity: Any, review: Any, incidents: Any,
                        models: Iterable[str], review_timeout: float) -> None:
        """The oversight's gauges: in flight, the review queue, integrity, open incidents, the control state."""
        review.on_closed(self.ticket_closed)
        incidents.on_open(self.incident_opened)
        collector = _OversightCollector(state, inflight, integrity, list(models), review_timeout)
        queue = _Cached(review.pending_summary)
        unresolved = _Cached(lambda: _unresolved_incidents(incidents))
        collector.queue, collector.incidents = queue, unresolved
        self._refreshers += [queue.refresh, unresolved.refresh]
        self.registry.register(collector)

    async def refresh(self) -> None:
        """Before a scrape: the store-backed figures, read again if older than SCRAPE_CACHE_SECONDS."""
        for refresh in self._refreshers:
            await refresh()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _samples(metric: Any, suffix: str, labels: dict[str, str]):
    """The samples of `metric` (public `collect()`) named with `suffix` whose labels include `labels`."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix) and all(sample.labels.get(k) == v for k, v in labels.items()):
                yield sample


async def _unresolved_incidents(incidents: Any) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for status in UNRESOLVED:
        for incident in await incidents.list(status=status, limit=10_000):
            key = (incident.severity, status)
            counts[key] = counts.get(key, 0) + 1
    return counts


class _Cached:
    """An async read kept for SCRAPE_CACHE_SECONDS; a failed read keeps the last value and says so."""

    def __init__(self, read: Callable[[], Awaitable[Any]]) -> None:
        self.read = read
        self.value: Any = None
        self.at = -float("inf")
        self.ok = False

    async def refresh(self) -> None:
        if time.monotonic() - self.at < SCRAPE_CACHE_SECONDS:
            return
        try:
            self.value, self.ok = await self.read(), True
        except Exception as exc:  # the store is down: the scrape still answers, with the last figures
            log.warning("metrics: could not read %s: %s", getattr(self.read, "__name__", "figures"), exc)
            self.ok = False
        self.at = time.monotonic()


class _OversightCollector(Collector):
    def __init__(self, state: Any, inflight: Any, integrity: Any, models: list[str], review_timeout: float) -> None:
        self.state, self.inflight, self.integrity, self.models = state, inflight, integrity, models
        self.review_timeout = review_timeout
        self.queue: _Cached | None = None
        self.incidents: _Cached | None = None

    def describe(self):
        return []  # label values are known only at scrape time

    def collect(self):
        in_flight = GaugeMetricFamily("gateway_requests_in_flight",
                                      "Requests in the data plane now (waiting on a model or a human included).",
                                      labels=["model"])
        counts = self.inflight.counts()
        for model in self.models:
            in_flight.add_metric([model], counts.get(model, 0))
        yield in_flight

        stale = GaugeMetricFamily("gateway_control_state_stale",
                                  "1 while this replica cannot confirm the control state (it serves failing closed).")
        stale.add_metric([], 1 if self.state.is_stale() else 0)
        age = GaugeMetricFamily("gateway_control_state_age_seconds",
                                "Seconds since the store last confirmed this replica's control state.")
        if getattr(self.state.store, "shared", True):  # alone on its own store, there is nothing to confirm
            age.add_metric([], max(0.0, time.monotonic() - self.state.confirmed_at))
        yield stale
        yield age

        integrity = GaugeMetricFamily("gateway_integrity_status",
                                      "1 for each version's current verification status (verified, failed, pending, unsigned).",
                                      labels=["model", "version", "status"])
        for (model, version), status in sorted(self.integrity.status.items()):
            for name in INTEGRITY_STATUSES:
                integrity.add_metric([model, version, name], 1 if status == name else 0)
        yield integrity

        if self.queue is not None:
            yield from self._queue(self.queue.value or {}, self.queue.ok)
        if self.incidents is not None:
            unresolved = self.incidents.value or {}
            family = GaugeMetricFamily("gateway_incidents_open", "Incidents not yet resolved, by severity and status.",
                                       labels=["severity", "status"])
            for severity in INCIDENT_SEVERITIES:
                for status in UNRESOLVED:
                    family.add_metric([severity, status], unresolved.get((severity, status), 0))
            yield family
        readable = GaugeMetricFamily("gateway_metrics_store_readable",
                                     "1 when the last scrape-time store read (queue, incidents) succeeded.")
        readable.add_metric([], 1 if all(c is None or c.ok for c in (self.queue, self.incidents)) else 0)
        yield readable

    def _queue(self, summary: dict[str, Any], ok: bool):
        depth = GaugeMetricFamily("gateway_review_queue_depth", "Pending tickets, by model and kind.",
                                  labels=["model", "kind"])
        oldest = GaugeMetricFamily("gateway_review_oldest_pending_age_seconds",
                                   "Age of the oldest pending ticket, by model and kind (0: none pending).",
                                   labels=["model", "kind"])
        expiry = GaugeMetricFamily("gateway_review_next_expiry_seconds",
                                   "Seconds until the soonest pending held or human ticket of a model expires.",
                                   labels=["model"])
        timeout = GaugeMetricFamily("gateway_review_timeout_seconds", "review.timeout: how long a ticket may stay pending.")
        timeout.add_metric([], self.review_timeout)
        now = time.time()
        pending = summary.get("pending", {})
        models = sorted(set(self.models) | {m for m, _ in pending})
        for model in models:
            for kind in TICKET_KINDS:
                count, created = pending.get((model, kind), (0, None))
                depth.add_metric([model, kind], count)
                oldest.add_metric([model, kind], max(0.0, now - created) if created is not None else 0.0)
        for model, expires_at in sorted(summary.get("next_expiry", {}).items()):
            expiry.add_metric([model], max(0.0, expires_at - now))
        yield from (depth, oldest, expiry, timeout)


class _EndpointCollector(Collector):
    """`gateway_upstream_endpoint_*`: each endpoint's requests, outstanding requests, state and ejections."""

    def __init__(self, endpoints: Callable[[], Iterable[tuple[str, str, Any]]]) -> None:
        self.endpoints = endpoints

    def describe(self):
        return []  # the families are known only at scrape time

    def collect(self):
        labels = ["model", "version", "endpoint"]
        requests = CounterMetricFamily("gateway_upstream_endpoint_requests", "Requests sent to each endpoint.", labels=labels)
        outstanding = GaugeMetricFamily("gateway_upstream_endpoint_outstanding", "Requests in flight per endpoint.",
                                        labels=labels)
        up = GaugeMetricFamily("gateway_upstream_endpoint_up", "1 while an endpoint is in rotation, 0 while ejected.",
                               labels=labels)
        ejections = CounterMetricFamily("gateway_upstream_endpoint_ejections", "Times an endpoint was ejected.", labels=labels)
        failures = CounterMetricFamily("gateway_upstream_endpoint_connect_failures", "Connects to an endpoint that failed.",
                                       labels=labels)
        for model, version, endpoint in self.endpoints():
            key = [model, version, endpoint.url]
            requests.add_metric(key, endpoint.requests)
            outstanding.add_metric(key, endpoint.outstanding)
            up.add_metric(key, 1 if endpoint.up else 0)
            ejections.add_metric(key, endpoint.ejections)
            failures.add_metric(key, endpoint.connect_failures)
        yield from (requests, outstanding, up, ejections, failures)
