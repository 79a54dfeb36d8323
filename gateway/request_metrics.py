"""The per-request metrics, kept as plain numbers in memory and turned into Prometheus families at scrape time.

Every answer adds to six series (requests, duration to the headers and to the end, the
gateway's own overhead, tokens, time to first token). `prometheus_client`'s children take a
lock and walk their buckets on every observation; here an observation is a bisect and two
list increments on the event loop's thread, and `collect()` (called by the scrape, on the
same thread) builds the cumulative buckets. The exposition is the same as a `Histogram`'s:
names, labels, `le` boundaries, `_count` and `_sum`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Tally:
    """One histogram series: counts per bucket (the last one is +Inf), the sum and the count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip([*map(floatToGoString, self.bounds), "+Inf"], self.counts):
            running += n
            out.append((bound, running))
        return out


class HistogramSeries:
    """A histogram family: label values -> Tally."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]) -> None:
        self.name, self.documentation, self.labels, self.bounds = name, documentation, list(labels), tuple(bounds)
        self.series: dict[tuple[str, ...], Tally] = {}

    def of(self, *values: str) -> Tally:
        tally = self.series.get(values)
        if tally is None:
            tally = self.series[values] = Tally(self.bounds)
        return tally

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, tally in self.series.items():
            family.add_metric(list(values), tally.cumulative(), tally.sum)
        return family


class RequestMetrics(Collector):
    """What the data plane's observer adds per answer; a collector of the registry."""

    def __init__(self, *, latency: Sequence[float], overhead: Sequence[float], tokens: Sequence[float],
                 ttft: Sequence[float]) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.latency = HistogramSeries(
            "gateway_request_duration_seconds",
            "Time from request to the answer's headers (a held answer's human wait included), by model, version, route.",
            ["model", "version", "route"], latency)
        self.completion = HistogramSeries(
            "gateway_request_completion_seconds",
            "Time from request to the answer's last byte (streaming and human waits included), by model, version, route.",
            ["model", "version", "route"], latency)
        self.overhead = HistogramSeries(
            "gateway_overhead_seconds",
            "The gateway's own time to the answer's headers: not the upstream, not streaming, not human waits.",
            ["route"], overhead)
        self.tokens = HistogramSeries(
            "gen_ai_client_token_usage",
            "Tokens per answer, from the answer's `usage` (OpenTelemetry gen_ai.client.token.usage).",
            ["gen_ai_request_model", "version", "gen_ai_token_type"], tokens)
        self.ttft = HistogramSeries(
            "gen_ai_server_time_to_first_token",
            "Seconds from sending a streamed request upstream to its first chunk "
            "(OpenTelemetry gen_ai.server.time_to_first_token).",
            ["gen_ai_request_model", "version"], ttft)
        self._answers: dict[tuple[str, str, str], tuple[Tally, Tally, Tally]] = {}
        self._usage: dict[tuple[str, str], tuple[Tally, Tally]] = {}

    # the request path ---------------------------------------------------------------------
    def answered(self, model: str, version: str, status: int, route: str, seconds: float, overhead: float,
                 completed: float) -> None:
        key = (model, version, str(status), route)
        self.requests[key] = self.requests.get(key, 0) + 1
        tallies = self._answers.get((model, version, route))
        if tallies is None:
            tallies = self._answers[(model, version, route)] = (
                self.latency.of(model, version, route), self.completion.of(model, version, route), self.overhead.of(route))
        tallies[0].add(seconds)
        tallies[1].add(completed)
        tallies[2].add(overhead)

    def used(self, model: str, version: str, input_tokens: int, output_tokens: int) -> None:
        pair = self._usage.get((model, version))
        if pair is None:
            pair = self._usage[(model, version)] = (self.tokens.of(model, version, "input"),
                                                    self.tokens.of(model, version, "output"))
        pair[0].add(input_tokens)
        pair[1].add(output_tokens)

    # figures for other parts ----------------------------------------------------------------
    def answers_by_status(self, model: str, version: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (m, v, status, _), n in self.requests.items():
            if m == model and v == version:
                out[status] = out.get(status, 0) + n
        return out

    def latency_totals(self, model: str, version: str) -> tuple[float, int]:
        """Sum of seconds to the headers, and how many answers, for one version (every route)."""
        total, count = 0.0, 0
        for (m, v, _), tally in self.latency.series.items():
            if m == model and v == version:
                total, count = total + tally.sum, count + tally.count
        return total, count

    # scrape time -----------------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return []  # label values are known only at scrape time

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("gateway_requests", "Requests answered, by model, version, status and oversight route.",
                                       labels=["model", "version", "status", "route"])
        for values, n in self.requests.items():
            requests.add_metric(list(values), n)
        yield requests
        for series in (self.latency, self.completion, self.overhead, self.tokens, self.ttft):
            yield series.family()
