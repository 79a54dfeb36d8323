"""Sudden shifts: a model's treatment of groups, against its own previous window.

The seed's "sudden shift in group treatment" and "accuracy disparity between subgroups
widens suddenly". The disparate-impact trigger compares groups with each other; these
compare the same model version with itself a window earlier (the previous window of the
same length), so a change shows even while the groups are still within the 80 % rule.
The same discipline as disparate impact: each group needs `min_per_group` in both
windows, and the trigger fires only when the end of the change's interval nearest
zero is past the threshold — a change a small sample could show by chance does not.
"""

from __future__ import annotations

import time

from gateway.incidents import signals
from gateway.incidents.counters import TrafficCounters
from gateway.policy import AccuracyGapShift, GroupShift


async def _windows(counters: TrafficCounters, model: str, version: str, window: float) -> tuple[dict, dict]:
    now = time.time()
    current = await counters.quality(model, version, window, end=now)
    # the previous window ends where the current one's first hourly bucket starts: no bucket is in both
    start = (int((now - window) // 3600) * 3600) - 1
    return current, await counters.quality(model, version, window, end=start)


async def group_shift(counters: TrafficCounters, t: GroupShift, model: str, version: str):
    current, before = await _windows(counters, model, version, t.window)
    shifts = signals.group_shifts(current, before, "grp", min_per_group=t.min_per_group, confidence=t.confidence)
    if not shifts or shifts[0].certain <= t.threshold:
        return None
    s = shifts[0]
    return ("group_shift", "bias",
            f"{model} {version}: group {s.group} is selected at {s.now:.1%}, {abs(s.change) * 100:.1f} points "
            f"{'up' if s.change > 0 else 'down'} from {s.before:.1%} the window before (at least {s.certain * 100:.1f} "
            f"at {t.confidence:.0%})", {"group": s.group, "before": s.before, "now": s.now, "change": s.change,
                                        "certain": s.certain, "decisions": list(s.counts)}, t.window)


async def accuracy_gap_shift(counters: TrafficCounters, t: AccuracyGapShift, model: str, version: str):
    current, before = await _windows(counters, model, version, t.window)
    found = signals.gap_shift(current, before, "acc", min_per_group=t.min_per_group, confidence=t.confidence)
    if found is None or found.certain <= t.threshold:
        return None
    low, high = found.groups
    return ("accuracy_gap_shift", "performance",
            f"{model} {version}: the accuracy gap between groups {high} and {low} widened from "
            f"{found.before * 100:.1f} to {found.now * 100:.1f} points (at least {found.certain * 100:.1f} at "
            f"{t.confidence:.0%})", {"before": found.before, "now": found.now, "widening": found.widening,
                                     "certain": found.certain, "groups": [low, high]}, t.window)
