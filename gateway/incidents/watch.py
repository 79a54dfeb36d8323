"""After a rollback, monitor closely (seed, "Post-Rollback: Monitor closely for issues (1 hour)").

When a model with an open incident is rolled back (by the incident's own containment or by
an operator), each such incident gets a watch: the model is raised to at least
`incidents.watch_level` (never lowered) for `incidents.post_rollback_watch`; when the
period is over, the restored version's error rate, latency, accuracy (reviewers'
judgements) and fairness during the period are compared with its own figures before the
incident opened (the pre-incident baseline), and the comparison goes on the incident.

Watches are documents in the store with a due time, so whichever replica is alive when
one falls due finishes it (claimed with a compare-and-set: once). Nothing lowers the
level when the watch ends: that stays an operator's decision, like every lowering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from gateway.incidents.records import Event, Incident
from gateway.incidents.window import WindowDecisions, accuracy, figures
from gateway.store import Collections, StaleWrite, StoreUnavailable

log = logging.getLogger("gateway.incidents")

WATCHES = "rollback_watches"
BASELINE_LOOKBACK = 7 * 86400.0


class Incidents(Protocol):
    async def open_for_model(self, model: str) -> list[Incident]: ...

    async def get(self, incident_id: str) -> Incident: ...

    async def add_event(self, incident_id: str, event: Event) -> Incident: ...


class Levels(Protocol):
    def current(self, model: str | None) -> tuple[int, dict[str, Any] | None]: ...

    async def set_level(self, level: int, *, model: str | None, actor: str, reason: str, action: str = ...) -> dict[str, Any]: ...


class PostRollbackWatch:
    def __init__(self, store: Collections, incidents: Incidents, levels: Levels, window: WindowDecisions, *,
                 period: float, level: int, check_every: float = 1.0) -> None:
        self.store = store
        self.incidents = incidents
        self.levels = levels
        self.window = window
        self.period = period
        self.level = level
        self.check_every = check_every
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="gateway-rollback-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def after_switch(self, result: dict[str, Any], actor: str) -> None:
        """The switcher's listener: a rollback starts a watch for each open incident of its model."""
        if result.get("action") == "rollback":
            result["watches"] = await self.begin(result["model"], result.get("from"), result["to"], actor=actor)

    async def begin(self, model: str, left: str | None, restored: str, *, actor: str) -> list[str]:
        started = time.time()
        watched = []
        for incident in await self.incidents.open_for_model(model):
            watch_id = f"{incident.id}:{int(started * 1000)}"
            doc = {"id": watch_id, "incident": incident.id, "model": model, "left": left, "restored": restored,
                   "started_at": started, "due_at": started + self.period, "status": "watching", "by": actor}
            try:
                await self.store.insert(WATCHES, watch_id, doc)
            except StaleWrite:
                continue
            raised = await self._raise(model, incident)
            await self.incidents.add_event(incident.id, Event(
                started, "watch_started", "gateway",
                f"rolled back {left} -> {restored}: watching {model} for {_duration(self.period)} ({raised}); then "
                f"comparing with the pre-incident baseline", {"watch": watch_id, "due_at": doc["due_at"]}))
            watched.append(watch_id)
        return watched

    async def _raise(self, model: str, incident: Incident) -> str:
        current, _ = self.levels.current(model)
        if current >= self.level:
            return f"level {current} kept"
        await self.levels.set_level(self.level, model=model, actor=f"incident:{incident.id}", action="incident_raise",
                                    reason=f"post-rollback watch of incident {incident.id}")
        return f"level {current} -> {self.level}"

    async def finish_due(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        done = 0
        for doc in await self.store.query(WATCHES, where={"status": "watching"}, limit=100, newest_first=False):
            if doc["due_at"] > now:
                continue
            try:
                await self.store.update(WATCHES, doc["id"], {**doc, "status": "comparing"}, expect={"status": "watching"})
            except StaleWrite:
                continue  # another replica took it
            comparison = await self.compare(doc)
            await self.store.update(WATCHES, doc["id"], {**doc, "status": "done", "comparison": comparison},
                                    expect={"status": "comparing"})
            await self.incidents.add_event(doc["incident"], Event(time.time(), "post_rollback_watch", "gateway",
                                                                  _summary(doc, comparison), comparison,
                                                                  ok=not comparison["worse"]))
            done += 1
        return done

    async def compare(self, watch: dict[str, Any]) -> dict[str, Any]:
        incident = await self.incidents.get(watch["incident"])
        model, version = watch["model"], watch["restored"]
        period = await asyncio.to_thread(self.window.read, watch["started_at"], watch["due_at"], model)
        period = [d for d in period if d.version == version]
        before = await asyncio.to_thread(self.window.read, incident.opened_at - BASELINE_LOOKBACK, incident.opened_at, model)
        before = [d for d in before if d.version == version]
        tickets = await self.store.query("tickets", where={"status": "decided", "model": model}, limit=100_000)
        watch_fig, base_fig = figures(period), figures(before)
        watch_fig["accuracy"] = accuracy(t for t in tickets if t.get("version") == version
                                         and watch["started_at"] <= t.get("created_at", 0) < watch["due_at"])
        base_fig["accuracy"] = accuracy(t for t in tickets if t.get("version") == version
                                        and t.get("created_at", 0) < incident.opened_at)
        changes = _changes(watch_fig, base_fig)
        return {"version": version, "period": {"since": watch["started_at"], "until": watch["due_at"], **watch_fig},
                "baseline": {"until": incident.opened_at, **base_fig}, "changes": changes,
                "worse": [name for name, c in changes.items() if c.get("worse")]}

    async def _forever(self) -> None:
        while True:
            try:
                await self.finish_due()
            except StoreUnavailable as exc:
                log.warning("post-rollback watches unavailable: %s", exc)
            except Exception:
                log.exception("post-rollback watch failed")
            await asyncio.sleep(self.check_every)


def _changes(now: dict[str, Any], base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each figure in the period against the baseline; `worse` marks a clear step back (seed thresholds)."""
    out: dict[str, dict[str, Any]] = {}

    def pair(name: str, a: Any, b: Any, worse: bool) -> None:
        out[name] = {"period": a, "baseline": b, "worse": bool(worse) if a is not None and b is not None else False}

    er, ber = now["error_rate"], base["error_rate"]
    pair("error_rate", er, ber, er is not None and ber is not None and er > max(0.01, ber * 2))
    lat, blat = now["latency_p50_ms"], base["latency_p50_ms"]
    pair("latency_p50_ms", lat, blat, lat is not None and blat is not None and blat > 0 and lat > 3 * blat)
    acc, bacc = now["accuracy"]["accuracy"], base["accuracy"]["accuracy"]
    pair("accuracy", acc, bacc, acc is not None and bacc is not None and acc < bacc * 0.95)
    di, bdi = now["disparate_impact"], base["disparate_impact"]
    pair("disparate_impact", di, bdi, di is not None and di < 0.8 and (bdi is None or di < bdi))
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _summary(watch: dict[str, Any], comparison: dict[str, Any]) -> str:
    parts = []
    for name, c in comparison["changes"].items():
        parts.append(f"{name} {c['period']} (before: {c['baseline']})" + (" WORSE" if c["worse"] else ""))
    period, base = comparison["period"]["decisions"], comparison["baseline"]["decisions"]
    verdict = "no figure worse than before" if not comparison["worse"] else "worse: " + ", ".join(comparison["worse"])
    return (f"post-rollback watch of {watch['model']} {watch['restored']} over {period} decision(s), against "
            f"{base} before the incident: {verdict}; " + "; ".join(parts))
