"""Live traffic counted per model and version in time buckets, summed across replicas in the store.

The request path only adds to a dictionary in memory; a flush every second adds those
increments to the store's counters in one round trip. Every replica does the same, so a
window read from the store covers all the traffic, whichever replica carried it.

Keys: `t|model|version|minute` (traffic: answers, errors, latency histogram),
`q|model|version|hour` (quality: feedback, groups' outcomes and accuracy, reviewers'
reasons, output checks, users' reports), `a|minute` (refused credentials, one field per
token id or address), `u|model|version|minute` (callers: one field per caller, one per
caller that saw a failure), `k|minute` and `kh|hour` (each token's requests and the
targets it asked, for its own baseline).

Fields named after callers or targets make a window's distinct count the number of
field names: exact across replicas, because the store sums fields by name.
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
ACCESS_TTL = 2 * 24 * HOUR + HOUR  # the hourly buckets cover a baseline of a day before a window
MAX_TARGETS = 200  # distinct targets per token per bucket kept by one replica: a scanner cannot grow the store without bound


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
        self._users: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._access: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._minute = -1
        self._suffixes = ("", "")

    # counting (request path: memory only) ---------------------------------------------
    def _bucket_keys(self, now: float) -> tuple[str, str]:
        """This minute's and this hour's key suffixes, made once a minute instead of per request."""
        minute = int(now // MINUTE) * MINUTE
        if minute != self._minute:
            self._minute, self._suffixes = minute, (str(minute), str(int(now // HOUR) * HOUR))
        return self._suffixes

    def answered(self, model: str, version: str, *, upstream_ms: float | None, error: bool, unreachable: bool) -> None:
        bucket = self._traffic[f"t|{model}|{version}|{self._bucket_keys(time.time())[0]}"]
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
        if group is not None:  # accuracy per group, for a gap that widens
            bucket[f"acc:{group}:n"] += 1
            if correct:
                bucket[f"acc:{group}:hit"] += 1
        if group is not None and label_favourable:  # a truly favourable case: was it missed?
            bucket[f"pos:{group}:n"] += 1
            if predicted_favourable is False:
                bucket[f"pos:{group}:hit"] += 1

    def refused(self, source: str) -> None:
        self._auth[f"a|{int(time.time() // MINUTE) * MINUTE}"][source] += 1

    def reviewed(self, model: str, version: str, *, wrong: bool, reason: str | None) -> None:
        """A reviewer's verdict or decision; a wrong answer counts under its reason."""
        bucket = self._quality[_quality_key(model, version, time.time())]
        bucket["rv_n"] += 1
        if wrong and reason:
            bucket[f"rv:{reason}"] += 1

    def checked(self, model: str, version: str, *, flagged: bool | None) -> None:
        """One answer through the output check: flagged, passed, or None (the classifier could not say)."""
        bucket = self._quality[_quality_key(model, version, time.time())]
        if flagged is None:
            bucket["oc_failed"] += 1
            return
        bucket["oc_n"] += 1
        if flagged:
            bucket["oc_flagged"] += 1

    def reported(self, model: str, version: str, *, caller: str, category: str) -> None:
        bucket = self._quality[_quality_key(model, version, time.time())]
        bucket["rep_n"] += 1
        bucket[f"rep:{category}"] += 1
        bucket[f"rpu:{caller}"] += 1

    def served(self, model: str, version: str, user: str, *, failed: bool) -> None:
        """One request of a caller (a token id, or the user a /v1 body names); failed: it got no prediction."""
        bucket = self._users[f"u|{model}|{version}|{self._bucket_keys(time.time())[0]}"]
        bucket[f"n:{user}"] += 1
        if failed:
            bucket[f"f:{user}"] += 1

    def accessed(self, token: str, target: str) -> None:
        """One request of a token, and what it asked for (method, model and path), minute and hour."""
        minute, hour = self._bucket_keys(time.time())
        count, field, distinct = f"n:{token}", f"t:{token}:{target}", f"c:{token}"
        for key in ("k|" + minute, "kh|" + hour):
            bucket = self._access[key]
            bucket[count] += 1
            if field in bucket:
                bucket[field] += 1
            elif bucket[distinct] < MAX_TARGETS:
                bucket[distinct] += 1
                bucket[field] = 1.0

    # the store ---------------------------------------------------------------------------
    async def flush(self) -> None:
        for pending, ttl in ((self._traffic, TRAFFIC_TTL), (self._quality, QUALITY_TTL), (self._auth, AUTH_TTL),
                             (self._users, TRAFFIC_TTL), (self._access, ACCESS_TTL)):
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

    async def users(self, model: str, version: str, seconds: float) -> dict[str, float]:
        """Per-caller request (`n:`) and failure (`f:`) counts over the last `seconds`."""
        now = time.time()
        return await self._window([f"u|{model}|{version}|{int(t)}" for t in _steps(now - seconds, now, MINUTE)])

    async def access(self, seconds: float) -> dict[str, float]:
        """Every token's requests (`n:token`) and targets (`t:token:target`) over the last `seconds` (minute buckets)."""
        now = time.time()
        return await self._window([f"k|{int(t)}" for t in _steps(now - seconds, now, MINUTE)])

    async def access_before(self, seconds: float, *, end: float) -> dict[str, float]:
        """The same, over the whole hours that end before `end` (a token's baseline)."""
        last = int(end // HOUR) * HOUR - HOUR
        starts = [t for t in _steps(end - seconds, end, HOUR) if t <= last]
        return await self._window([f"kh|{int(t)}" for t in starts])

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
