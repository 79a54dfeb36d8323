"""Prometheus metrics, with the labelled children cached so the request path pays one dict lookup."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by model, version, status and oversight route.",
            ["model", "version", "status", "route"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the answer's headers, by model and version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway itself adds to a request (excluding the upstream).",
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
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
        self._requests: dict[tuple[str, str, int, str], Counter] = {}
        self._latency: dict[tuple[str, str], Histogram] = {}

    def observe(self, model: str, version: str, status: int, route: str, seconds: float, overhead: float) -> None:
        key = (model, version, status, route)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(model, version, str(status), route)
        counter.inc()
        lkey = (model, version)
        histogram = self._latency.get(lkey)
        if histogram is None:
            histogram = self._latency[lkey] = self.latency.labels(model, version)
        histogram.observe(seconds)
        self.overhead.observe(overhead)

    def summary(self, model: str, version: str) -> dict:
        """This replica's figures for one version: answers by status, upstream errors, mean latency."""
        statuses: dict[str, float] = {}
        for (m, v, status, _route), counter in self._requests.items():
            if m == model and v == version:
                statuses[str(status)] = statuses.get(str(status), 0) + counter._value.get()
        errors = sum(child._value.get() for labels, child in self.upstream_errors._metrics.items()
                     if labels[0] == model and labels[1] == version)
        histogram = self._latency.get((model, version))
        count = total = 0.0
        if histogram is not None:
            total = histogram._sum.get()
            count = sum(b.get() for b in histogram._buckets)
        answered = sum(statuses.values())
        return {"answers_by_status": statuses, "upstream_errors": errors,
                "error_rate": round(errors / answered, 6) if answered else None,
                "mean_latency_ms": round(total / count * 1000, 3) if count else None}

    def upstream_error(self, model: str, version: str, kind: str) -> None:
        self.upstream_errors.labels(model, version, kind).inc()

    def watch_endpoints(self, endpoints: Callable[[], Iterable[tuple[str, str, Any]]]) -> None:
        """Per-endpoint figures, read from the balancers' own counters when scraped (nothing per request)."""
        self.registry.register(_EndpointCollector(endpoints))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
