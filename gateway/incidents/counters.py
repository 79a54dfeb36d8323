"""Live traffic counted per model and version in time buckets, summed across replicas in the store.

The request path only adds to a dictionary in memory; a flush every second adds those
increments to the store's counters in one round trip. Every replica does the same, so a
window read from the store covers all the traffic, whichever replica carried it.

Keys: `t|model|version|minute` (traffic: answers, errors, latency histogram),
`q|model|version|hour` (quality: feedback, groups' outcomes), `a|minute` (refused
credentials, one field per token id or address).
"""

from __future__ import annotations

import time
from collections import defaultdict

from gateway.incidents.signals import latency_bucket
from gateway.store import Store

MINUTE, HOUR = 60, 3600
TRAFFIC_TTL = 2 * HOUR + MINUTE
QUALITY_TTL = 9 * 24 * HOUR
AUTH_TTL = HOUR


def _traffic_key(model: str, version: str, at: float) -> str:
    return f"t|{model}|{version}|{int(at // MINUTE) * MINUTE}"


def _quality_key(model: str, version: str, at: float) -> str:
    return f"q|{model}|{version}|{int(at // HOUR) * HOUR}"


class TrafficCounters:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._traffic: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._quality: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._auth: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))

    # counting (request path: memory only) ---------------------------------------------
    def answered(self, model: str, version: str, *, upstream_ms: float | None, error: bool, unreachable: bool) -> None:
        bucket = self._traffic[_traffic_key(model, version, time.time())]
        bucket["requests"] += 1
        if error:
            bucket["errors"] += 1
        if unreachable:
            bucket["unreachable"] += 1
        else:
            bucket["reached"] += 1
        if upstream_ms is not None:
            bucket[f"lat{latency_bucket(upstream_ms)}"] += 1

    def outcome(self, model: str, version: str, group: str, favourable: bool) -> None:
        bucket = self._quality[_quality_key(model, version, time.time())]
        bucket[f"grp:{group}:n"] += 1
        if favourable:
            bucket[f"grp:{group}:hit"] += 1

    def feedback(self, model: str, version: str, *, correct: bool, group: str | None = None,
                 label_favourable: bool | None = None, predicted_favourable: bool | None = None) -> None:
        bucket = self._quality[_quality_key(model, version, time.time())]
        bucket["fb_n"] += 1
        if correct:
            bucket["fb_correct"] += 1
        if group is not None and label_favourable:  # a truly favourable case: was it missed?
            bucket[f"pos:{group}:n"] += 1
            if predicted_favourable is False:
                bucket[f"pos:{group}:hit"] += 1

    def refused(self, source: str) -> None:
        self._auth[f"a|{int(time.time() // MINUTE) * MINUTE}"][source] += 1

    # the store ---------------------------------------------------------------------------
    async def flush(self) -> None:
        for pending, ttl in ((self._traffic, TRAFFIC_TTL), (self._quality, QUALITY_TTL), (self._auth, AUTH_TTL)):
            if not pending:
                continue
            counts = {key: dict(fields) for key, fields in pending.items()}
            pending.clear()
            try:
                await self.store.add_counts(counts, ttl)
            except Exception:
                for key, fields in counts.items():  # keep them for the next flush: nothing counted is lost
                    for name, value in fields.items():
                        pending[key][name] += value
                raise

    async def traffic(self, model: str, version: str, seconds: float, *, end: float | None = None) -> dict[str, float]:
        end = time.time() if end is None else end
        return await self._window([_traffic_key(model, version, t) for t in _steps(end - seconds, end, MINUTE)])

    async def quality(self, model: str, version: str, seconds: float, *, end: float | None = None) -> dict[str, float]:
        end = time.time() if end is None else end
        return await self._window([_quality_key(model, version, t) for t in _steps(end - seconds, end, HOUR)])

    async def refusals(self, seconds: float) -> dict[str, float]:
        """Refused credentials per source over the last `seconds`."""
        now = time.time()
        return await self._window([f"a|{int(t)}" for t in _steps(now - seconds, now, MINUTE)])

    async def recent_minutes(self, model: str, version: str, count: int) -> list[dict[str, float]]:
        """The last `count` minute buckets, newest first (for how long an upstream has been down)."""
        now = time.time()
        keys = [_traffic_key(model, version, now - i * MINUTE) for i in range(count)]
        found = await self.store.read_counts(keys)
        return [found[key] for key in keys]

    async def _window(self, keys: list[str]) -> dict[str, float]:
        total: defaultdict[str, float] = defaultdict(float)
        for fields in (await self.store.read_counts(keys)).values():
            for name, value in fields.items():
                total[name] += value
        return dict(total)


def _steps(start: float, end: float, step: int) -> list[float]:
    """Bucket starts covering [start, end]."""
    first = int(start // step) * step
    return [float(t) for t in range(first, int(end) + 1, step)]
