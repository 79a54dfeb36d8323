"""Verification: confirm an incident with independent testing (seed, "Immediate Actions: Verification").

When an incident about a model opens (and on demand, `POST /admin/incidents/{id}/verify`),
the model's known-good dataset (the policy's `verification`, else its `smoke` dataset) runs
against the version the incident is about and against the previous version that still
verifies, each over its own upstream; both pass rates and their difference go on the
incident's timeline ("run performance test against known good dataset; compare current vs
recent baseline"). Meanwhile every replica is asked, over a store topic, for its own
figures of the incident's window (from its evidence log, and its traffic since start), and
those that answer within `incidents.replica_wait` are attached too ("verify across
multiple instances").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.control import keys
from gateway.incidents.records import Event, Incident
from gateway.incidents.window import WindowDecisions, figures
from gateway.integrity.gate import FAILED
from gateway.policy import EffectiveModelPolicy, SmokeTest
from gateway.store import Collections, StaleWrite, StoreUnavailable, Topics

log = logging.getLogger("gateway.incidents")

TOPIC = "incident_figures"
FIGURES = "incident_figures"


class Versions(Protocol):
    async def previously_active(self, model: str) -> list[str]: ...

    async def smoke_test(self, model: str, version: str, smoke: SmokeTest) -> dict[str, Any]: ...


class Timeline(Protocol):
    async def get(self, incident_id: str) -> Incident: ...

    async def add_event(self, incident_id: str, event: Event) -> Incident: ...


class Mirror(Protocol):
    replica_id: str

    def doc(self, key: str) -> dict[str, Any] | None: ...


class FiguresStore(Collections, Topics, Protocol):
    pass


class Verification:
    def __init__(self, store: FiguresStore, incidents: Timeline, versions: Versions, state: Mirror,
                 window: WindowDecisions, *, policies: Mapping[str, EffectiveModelPolicy], known: Callable[[str], list[str]],
                 traffic: Callable[[str, str], dict[str, Any]], replica_wait: float, spawn: Callable[[Any], None]) -> None:
        self.store = store
        self.incidents = incidents
        self.versions = versions
        self.state = state
        self.window = window
        self.policies = policies
        self.known = known  # a model's versions in the catalog
        self.traffic = traffic
        self.replica_wait = replica_wait
        self.spawn = spawn
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        self._unsubscribe = self.store.subscribe(TOPIC, self._asked)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()

    def on_open(self, incident: Incident) -> None:
        """The incident manager's follow-up: verify in the background, so opening never waits on a dataset."""
        if incident.model is not None:
            self.spawn(self.run(incident.id, actor="gateway"))

    async def run(self, incident_id: str, *, actor: str) -> dict[str, Any]:
        incident = await self.incidents.get(incident_id)
        model = incident.model
        if model is None:
            raise ValueError("this incident names no model: nothing to test")
        asked_at = time.time()
        await self.store.publish(TOPIC, {"incident": incident.id, "model": model, "version": incident.version,
                                         "since": incident.since, "until": incident.until, "asked_at": asked_at})
        live = incident.version or ""
        previous = await self._previous(model, live)
        test = self._dataset(model)
        results: dict[str, Any] = {"dataset": str(test.dataset) if test else None}
        if test is None:
            results["skipped"] = f"the policy names no dataset for {model} (models.{model}.verification or .smoke)"
        else:
            runs = await asyncio.gather(self._one(model, live, test),
                                        self._one(model, previous, test) if previous else _none())
            results["live"] = {"version": live, **runs[0]}
            results["previous"] = {"version": previous, **runs[1]} if previous else None
            if previous and runs[0].get("rate") is not None and runs[1].get("rate") is not None:
                results["difference"] = round(runs[0]["rate"] - runs[1]["rate"], 4)
        await asyncio.sleep(max(0.0, asked_at + self.replica_wait - time.time()))
        results["replicas"] = sorted(await self.store.query(FIGURES, where={"incident": incident.id}, limit=1000),
                                     key=lambda d: d.get("replica", ""))
        event = Event(time.time(), "verification", actor, _summary(results), results,
                      ok=_passes(results, test))
        await self.incidents.add_event(incident.id, event)
        return results

    async def _one(self, model: str, version: str, test: SmokeTest) -> dict[str, Any]:
        try:
            run = await self.versions.smoke_test(model, version, test)
        except Exception as exc:  # the test must report, whatever the version does
            return {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
        return {k: run.get(k) for k in ("ok", "passed", "total", "rate", "min_pass_rate", "detail", "failures")}

    async def _previous(self, model: str, live: str) -> str | None:
        known = set(self.known(model))
        for version in await self.versions.previously_active(model):
            verdict = (self.state.doc(keys.verification(model, version)) or {}).get("status")
            if version != live and version in known and verdict != FAILED:
                return version
        return None

    def _dataset(self, model: str) -> SmokeTest | None:
        policy = self.policies.get(model)
        return (policy.verification or policy.smoke) if policy else None

    # every replica: its own figures for the window --------------------------------------
    def _asked(self, message: dict[str, Any]) -> None:
        if message.get("model") in self.policies:
            self.spawn(self._answer(message))

    async def _answer(self, message: dict[str, Any]) -> None:
        model, version = message["model"], message.get("version")
        own = await asyncio.to_thread(self.window.read, float(message["since"]), None, model, own_only=True)
        replica = self.state.replica_id
        doc = {"id": f"{message['incident']}:{replica}", "incident": message["incident"], "replica": replica,
               "at": time.time(), "window": figures(own), "since_start": self.traffic(model, version) if version else {}}
        try:
            await self.store.insert(FIGURES, doc["id"], doc)
        except StoreUnavailable as exc:
            log.warning("could not report this replica's figures for %s: %s", message["incident"], exc)
        except StaleWrite:  # asked twice (an on-demand run): the newer figures replace the older
            await self.store.delete(FIGURES, doc["id"])
            await self.store.insert(FIGURES, doc["id"], doc)


async def _none() -> dict[str, Any]:
    return {}


def _passes(results: dict[str, Any], test: SmokeTest | None) -> bool | None:
    live = results.get("live")
    return None if test is None or not live else bool(live.get("ok"))


def _summary(results: dict[str, Any]) -> str:
    parts = []
    if results.get("skipped"):
        parts.append(f"no independent test: {results['skipped']}")
    for name in ("live", "previous"):
        run = results.get(name)
        if run:
            rate = run.get("rate")
            parts.append(f"{name} {run['version']}: {run.get('passed')}/{run.get('total')} passed"
                         + (f" ({rate:.0%})" if isinstance(rate, (int, float)) else f" ({run.get('detail')})"))
    if results.get("difference") is not None:
        parts.append(f"difference {results['difference']:+.0%}")
    if not results.get("previous") and not results.get("skipped"):
        parts.append("no earlier version that verifies to compare with")
    parts.append(f"figures from {len(results.get('replicas') or [])} replica(s) attached")
    return "; ".join(parts)
