"""Suspicious access and extraction: one token far beyond its own normal.

The seed's "suspicious access patterns" and "model extraction attack detected". Model
extraction needs many answers, usually over many inputs or endpoints; a stolen token
behaves unlike its owner. Each token is compared with its own baseline — its traffic in
the `baseline_window` before the current window, scaled to the window's length — not
with other tokens, whose normal may be very different. Two measures: volume (requests)
and breadth (distinct targets: method, model and path). A measure fires when it is over
`factor` times the token's baseline and over its floor (`min_requests`, `min_targets`),
so a new or quiet token is not suspect for its first few requests.
"""

from __future__ import annotations

import time
from collections import defaultdict

from gateway.incidents.counters import TrafficCounters
from gateway.policy import SuspiciousAccess


def _per_token(counts: dict[str, float]) -> tuple[dict[str, float], dict[str, set[str]]]:
    volume: dict[str, float] = defaultdict(float)
    targets: dict[str, set[str]] = defaultdict(set)
    for name, value in counts.items():
        if name.startswith("n:"):
            volume[name[2:]] += value
        elif name.startswith("t:"):
            token, _, target = name[2:].partition(":")
            targets[token].add(target)
    return volume, targets


async def suspicious_access(counters: TrafficCounters, t: SuspiciousAccess):
    now = time.time()
    volume, targets = _per_token(await counters.access(t.window))
    if not volume:
        return None
    start = now - t.window
    base_volume, base_targets = _per_token(await counters.access_before(t.baseline_window, end=start))
    scale = t.window / t.baseline_window
    worst = None
    for token, n in volume.items():
        normal = base_volume.get(token, 0.0) * scale
        breadth, normal_breadth = len(targets.get(token, ())), len(base_targets.get(token, ()))
        if n > t.min_requests and n > t.factor * normal:
            finding = ("volume", n, normal)
        elif breadth > t.min_targets and breadth > t.factor * normal_breadth:
            finding = ("breadth", breadth, normal_breadth)
        else:
            continue
        if worst is None or finding[1] > worst[2][1]:
            worst = (token, n, finding)
    if worst is None:
        return None
    token, n, (measure, value, normal) = worst
    what = "requests" if measure == "volume" else "distinct targets"
    return ("suspicious_access", "security",
            f"token {token}: {int(value)} {what} within {t.window / 60:g} min, over {t.factor:g}x its normal "
            f"({normal:.1f}); possible misuse or model extraction",
            {"token": token, "measure": measure, "value": value, "baseline": normal, "requests": n,
             "targets": len(targets.get(token, ()))}, t.window)
