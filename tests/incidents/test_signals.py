"""The statistics behind the triggers, checked against independent computations."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import norm

from gateway.incidents import signals


def _histogram(latencies):
    counts: dict[str, float] = {}
    for ms in latencies:
        key = f"lat{signals.latency_bucket(ms)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("latencies", [[12.0] * 50, [5 + i for i in range(101)], [0.3, 0.5, 400, 800, 1200], [30_000.0] * 9])
def test_the_median_from_the_histogram_is_within_two_percent(latencies):
    estimate = signals.p50_ms(_histogram(latencies), min_count=1)
    assert estimate == pytest.approx(statistics.median(latencies), rel=0.021, abs=1.0)


def test_too_few_samples_say_nothing():
    assert signals.p50_ms(_histogram([10.0] * 9), min_count=10) is None
    assert signals.error_rate({"requests": 99, "errors": 99}, min_requests=100) is None
    assert signals.error_rate({"requests": 100, "errors": 2}, min_requests=100) == 0.02
    assert signals.accuracy({"fb_n": 5, "fb_correct": 0}, min_samples=6) is None


def _katz_upper(x1, n1, x2, n2, confidence=0.95):
    """The Katz log interval's upper end for (x1/n1)/(x2/n2), written out by hand."""
    ratio = (x1 / n1) / (x2 / n2)
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    return ratio * math.exp(norm.ppf(0.5 + confidence / 2) * se)


def test_disparate_impact_ratio_and_its_upper_bound():
    counts = {"grp:A:n": 400, "grp:A:hit": 280, "grp:B:n": 400, "grp:B:hit": 200, "grp:C:n": 400, "grp:C:hit": 260}
    found = signals.disparate_impact(counts, min_per_group=30, confidence=0.95)
    assert (found.lowest, found.highest) == ("B", "A")
    assert found.ratio == pytest.approx(200 / 280)
    assert found.ratio_upper == pytest.approx(_katz_upper(200, 400, 280, 400))
    assert found.rates == {"A": 0.7, "B": 0.5, "C": 0.65}


def test_small_groups_are_left_out_of_the_ratio():
    counts = {"grp:A:n": 400, "grp:A:hit": 280, "grp:B:n": 29, "grp:B:hit": 0}
    assert signals.disparate_impact(counts, min_per_group=30, confidence=0.95) is None


def test_false_negative_rate_gap():
    counts = {"pos:A:n": 50, "pos:A:hit": 5, "pos:B:n": 50, "pos:B:hit": 8, "pos:C:n": 10, "pos:C:hit": 10}
    gap, rates = signals.fnr_gap(counts, min_per_group=30)
    assert gap == pytest.approx(0.06) and set(rates) == {"A", "B"}


def test_drop_is_relative_to_the_baseline():
    assert signals.drop_pct(0.855, 0.9) == pytest.approx(5.0)


def test_scipy_is_loaded_only_when_a_fairness_interval_is_computed():
    """SciPy alone is ~80 MB resident: a gateway that never evaluates fairness never loads it."""
    import subprocess
    import sys

    code = "import sys, gateway.app; print('scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
