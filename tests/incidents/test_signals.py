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


# shifts against the previous window ----------------------------------------------------------
def test_wilsons_interval_matches_the_textbook_value():
    low, high = signals.wilson(50, 100, 1.959964)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)


def test_newcombes_interval_for_a_difference_matches_newcombe_1998():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 - 48/80, method 10
    d, low, high = signals.difference_interval(56, 70, 48, 80, confidence=0.95)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)


def test_a_group_needs_enough_data_in_both_windows_to_shift():
    now = {"grp:A:n": 100, "grp:A:hit": 90, "grp:B:n": 100, "grp:B:hit": 90}
    before = {"grp:A:n": 29, "grp:A:hit": 0, "grp:B:n": 30, "grp:B:hit": 27}
    (only,) = signals.group_shifts(now, before, "grp", min_per_group=30, confidence=0.95)
    assert only.group == "B" and only.certain == 0.0  # 90 % both times: no shift at all


def test_a_gap_that_did_not_widen_is_not_certain_to_have():
    same = {"acc:A:n": 100, "acc:A:hit": 90, "acc:B:n": 100, "acc:B:hit": 70}
    found = signals.gap_shift(same, same, "acc", min_per_group=30, confidence=0.95)
    assert (found.widening, found.certain, found.groups) == (0.0, 0.0, ("B", "A"))
