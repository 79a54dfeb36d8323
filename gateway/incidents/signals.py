"""The statistics behind the triggers, as plain functions over window counts.

Counts come from `gateway.incidents.counters`: summed over every replica, over whole
buckets. Each function returns None when there is too little data to say anything, so
a quiet or small window never trips a trigger by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Latency histogram: bucket i holds latencies in (GROWTH**(i-1), GROWTH**i] ms, so a median
# read from it is within 2 % of the true one whatever the scale (0.1 ms to minutes).
GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
_MAX_BUCKET = 800  # about 7 minutes


def latency_bucket(ms: float) -> int:
    if ms <= 1.0:
        return 0
    return min(_MAX_BUCKET, math.ceil(math.log(ms) / _LOG_GROWTH))


def p50_ms(counts: dict[str, float], *, min_count: int) -> float | None:
    """The median from the histogram, interpolated inside its bucket."""
    buckets = sorted((int(name[3:]), n) for name, n in counts.items() if name.startswith("lat") and n > 0)
    total = sum(n for _, n in buckets)
    if total < max(1, min_count):
        return None
    half, seen = total / 2, 0.0
    for i, n in buckets:
        if seen + n >= half:
            high = GROWTH ** i
            low = GROWTH ** (i - 1) if i else 0.0
            return low + (high - low) * (half - seen) / n
        seen += n
    return None


def error_rate(counts: dict[str, float], *, min_requests: int) -> float | None:
    requests = counts.get("requests", 0.0)
    if requests < max(1, min_requests):
        return None
    return counts.get("errors", 0.0) / requests


def accuracy(counts: dict[str, float], *, min_samples: int) -> float | None:
    n = counts.get("fb_n", 0.0)
    if n < max(1, min_samples):
        return None
    return counts.get("fb_correct", 0.0) / n


def drop_pct(current: float, baseline: float) -> float:
    """How far below the baseline, in percent of the baseline (the seed's formula)."""
    return (baseline - current) / baseline * 100 if baseline > 0 else 0.0


@dataclass(frozen=True)
class Fairness:
    rates: dict[str, float]
    counts: dict[str, int]
    ratio: float
    ratio_upper: float
    lowest: str
    highest: str


def groups_in(counts: dict[str, float], prefix: str) -> dict[str, tuple[float, float]]:
    """{group: (n, hits)} from fields `{prefix}:{group}:n` and `{prefix}:{group}:hit`."""
    out: dict[str, list[float]] = {}
    for name, value in counts.items():
        if name.startswith(prefix + ":"):
            group, _, kind = name[len(prefix) + 1:].rpartition(":")
            pair = out.setdefault(group, [0.0, 0.0])
            pair[0 if kind == "n" else 1] += value
    return {g: (n, hits) for g, (n, hits) in out.items()}


def disparate_impact(counts: dict[str, float], *, min_per_group: int, confidence: float) -> Fairness | None:
    """Selection rate per group, their lowest-to-highest ratio, and that ratio's upper confidence bound.

    The interval is SciPy's for a relative risk (Katz's log method): a window trips the
    trigger only when even the optimistic end of the interval is below the threshold.
    """
    groups = {g: (n, fav) for g, (n, fav) in groups_in(counts, "grp").items() if n >= min_per_group}
    if len(groups) < 2:
        return None
    rates = {g: fav / n for g, (n, fav) in groups.items()}
    lowest, highest = min(rates, key=rates.get), max(rates, key=rates.get)  # type: ignore[arg-type]
    if rates[highest] == 0:
        return None
    (n1, x1), (n2, x2) = groups[lowest], groups[highest]
    ratio = rates[lowest] / rates[highest]
    if x1 == 0:
        upper = 0.0  # no favourable outcome at all in a group of adequate size
    else:
        from scipy.stats.contingency import relative_risk  # imported when needed: SciPy alone is ~80 MB resident

        interval = relative_risk(int(x1), int(n1), int(x2), int(n2)).confidence_interval(confidence_level=confidence)
        upper = float(interval.high)
    return Fairness(rates, {g: int(n) for g, (n, _) in groups.items()}, ratio, upper, lowest, highest)


def fnr_gap(counts: dict[str, float], *, min_per_group: int) -> tuple[float, dict[str, float]] | None:
    """The widest gap between groups' false negative rates, among answers whose true label is favourable."""
    groups = {g: fn / n for g, (n, fn) in groups_in(counts, "pos").items() if n >= min_per_group}
    if len(groups) < 2:
        return None
    return max(groups.values()) - min(groups.values()), groups


# shifts against the previous window ------------------------------------------------------
def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(hits: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion (stays inside [0, 1], sound near 0 and 1)."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def difference_interval(x1: float, n1: float, x2: float, n2: float, *, confidence: float) -> tuple[float, float, float]:
    """p1 - p2 and Newcombe's interval for it (method 10: from the two Wilson intervals)."""
    z = _z(confidence)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def near_end(low: float, high: float) -> float:
    """How far from zero an interval certainly is: 0 when it contains zero, else its end nearest zero (in size)."""
    if low <= 0 <= high:
        return 0.0
    return min(abs(low), abs(high))


@dataclass(frozen=True)
class Shift:
    group: str
    before: float
    now: float
    change: float  # now - before
    certain: float  # the size of change its interval is sure of (the end nearest zero)
    counts: tuple[int, int]  # (before, now)


def group_shifts(now: dict[str, float], before: dict[str, float], prefix: str, *, min_per_group: int,
                 confidence: float) -> list[Shift]:
    """Per group with enough data in both windows: its rate's change, and how much of it the interval is sure of."""
    current, earlier = groups_in(now, prefix), groups_in(before, prefix)
    shifts = []
    for group, (n2, x2) in current.items():
        if group not in earlier:
            continue
        n1, x1 = earlier[group]
        if n1 < min_per_group or n2 < min_per_group:
            continue
        d, low, high = difference_interval(x2, n2, x1, n1, confidence=confidence)
        shifts.append(Shift(group, x1 / n1, x2 / n2, d, near_end(low, high), (int(n1), int(n2))))
    return sorted(shifts, key=lambda s: -s.certain)


@dataclass(frozen=True)
class GapShift:
    before: float  # the widest gap between groups' rates in the previous window
    now: float
    widening: float  # now - before
    certain: float  # the lower end of the widening's interval (0 when it may not have widened)
    groups: tuple[str, str]  # the groups furthest apart now (lowest, highest)


def gap_shift(now: dict[str, float], before: dict[str, float], prefix: str, *, min_per_group: int,
              confidence: float) -> GapShift | None:
    """How much the gap between the groups furthest apart now has widened since the previous window.

    The same two groups are compared in both windows; the interval is Wald's for a
    difference of two differences (four independent proportions).
    """
    current = {g: v for g, v in groups_in(now, prefix).items() if v[0] >= min_per_group}
    earlier = {g: v for g, v in groups_in(before, prefix).items() if v[0] >= min_per_group}
    both = [g for g in current if g in earlier]
    if len(both) < 2:
        return None
    rate = lambda pair: pair[1] / pair[0]  # noqa: E731
    low, high = min(both, key=lambda g: rate(current[g])), max(both, key=lambda g: rate(current[g]))
    gap_now = rate(current[high]) - rate(current[low])
    gap_before = rate(earlier[high]) - rate(earlier[low])
    variance = sum(p * (1 - p) / n for n, p in ((pair[0], rate(pair)) for pair in
                                                 (current[high], current[low], earlier[high], earlier[low])))
    widening = gap_now - gap_before
    lower = widening - _z(confidence) * math.sqrt(variance)
    return GapShift(gap_before, gap_now, widening, max(0.0, lower), (low, high))
