"""Incidents: opened once per cause, contained at once, tracked until a human resolves them.

Opening an incident (seed, "Immediate Actions"): raise the model's oversight level as the
trigger says (never lower it), put the evidence of its window under legal hold, record a
snapshot of the model's state, roll back if the policy asks, and notify. Every step and
its result goes on the incident's timeline and into the evidence log.

One cause, one incident: replicas that see the same trigger race to claim the cause with
a compare-and-set; the losers add to the winner's timeline instead (at most once a minute).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest, Conflict, GatewayError, NotFound
from gateway.store import StaleWrite

if TYPE_CHECKING:
    from gateway.context import Gateway

log = logging.getLogger("gateway.incidents")

INCIDENTS, CAUSES = "incidents", "incident_causes"
OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
CATEGORIES = ("performance", "bias", "security", "availability", "other")
SEVERITIES = ("low", "medium", "high", "critical")
REPEAT_EVERY = 60.0


class IncidentManager:
    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw

    # IncidentSink ----------------------------------------------------------------------
    async def raise_incident(self, *, category: str, trigger: str, severity: str, model: str | None, version: str | None,
                             summary: str, values: dict[str, Any], window: dict[str, float] | None = None,
                             raise_to: int | None | object = None, rollback: bool | None = None,
                             actor: str = "gateway") -> dict[str, Any]:
        """Open an incident for this cause, or add to the open one. Returns the incident.

        Without `raise_to` and `rollback`, a trigger the policy names (e.g. `integrity`) acts
        as the policy says; other callers pass what they want done.
        """
        configured = getattr(self.gw.policy.triggers, trigger, None)
        if raise_to is None and rollback is None and configured is not None:
            raise_to, rollback = configured.raise_to, configured.rollback
        cause = f"{trigger}:{model or '*'}:{version or '*'}"
        now = time.time()
        existing = await self._open_for(cause)
        if existing is not None:
            await self._repeat(existing, cause, values, now)
            return existing
        incident = {
            "id": "inc_" + os.urandom(6).hex(), "cause": cause, "status": OPEN, "category": category, "trigger": trigger,
            "severity": severity, "model": model, "version": version, "summary": summary, "values": values,
            "window": window or {"since": now - 3600, "until": now}, "opened_at": now, "opened_by": actor,
            "timeline": [{"at": now, "type": "detected", "by": actor, "text": summary, "values": values}],
            "actions": [], "hold": None, "updated": 0,
        }
        try:
            await self.gw.store.insert(CAUSES, cause, {"id": cause, "incident": incident["id"], "last_repeat": now})
        except StaleWrite:  # another replica opened it a moment ago
            existing = await self._open_for(cause)
            if existing is not None:
                await self._repeat(existing, cause, values, now)
                return existing
            raise Conflict("incident state changed meanwhile; try again") from None
        await self.gw.store.insert(INCIDENTS, incident["id"], incident)
        log.error("incident %s opened: %s", incident["id"], summary,
                  extra={"incident": incident["id"], "trigger": trigger, "severity": severity, "model": model})
        await self.gw.recorder.action("incident_opened", actor=actor, reason=summary, incident=incident["id"],
                                      category=category, trigger=trigger, severity=severity, model=model, version=version,
                                      values=values)
        await self._contain(incident, raise_to=raise_to, rollback=bool(rollback))
        return await self.get(incident["id"])

    # operators -------------------------------------------------------------------------
    async def open_by_hand(self, *, category: str, severity: str, model: str | None, summary: str, actor: str,
                           raise_to: int | None) -> dict[str, Any]:
        if category not in CATEGORIES:
            raise BadRequest(f"category must be one of {', '.join(CATEGORIES)}")
        if severity not in SEVERITIES:
            raise BadRequest(f"severity must be one of {', '.join(SEVERITIES)}")
        if model is not None and model not in self.gw.catalog.models:
            raise NotFound(f"unknown model {model!r}")
        version = self.gw.state.active.get(model) if model else None
        now = time.time()
        return await self.raise_incident(
            category=category, trigger=f"manual-{os.urandom(3).hex()}", severity=severity, model=model, version=version,
            summary=summary, values={}, window={"since": now - 3600, "until": now}, raise_to=raise_to, rollback=False,
            actor=actor,
        )

    async def acknowledge(self, incident_id: str, *, actor: str, note: str | None) -> dict[str, Any]:
        def change(incident: dict[str, Any]) -> None:
            if incident["status"] != OPEN:
                raise Conflict(f"incident {incident_id} is {incident['status']}, not open")
            incident.update(status=ACKNOWLEDGED, acknowledged_by=actor, acknowledged_at=time.time())
        return await self._event(incident_id, change, {"type": "acknowledged", "by": actor, "text": note or ""})

    async def note(self, incident_id: str, *, actor: str, text: str) -> dict[str, Any]:
        if not text.strip():
            raise BadRequest("a note needs text")
        return await self._event(incident_id, lambda incident: None, {"type": "note", "by": actor, "text": text})

    async def resolve(self, incident_id: str, *, actor: str, note: str) -> dict[str, Any]:
        if not note or not note.strip():
            raise BadRequest("resolving an incident needs a note: what was found and done")

        def change(incident: dict[str, Any]) -> None:
            if incident["status"] == RESOLVED:
                raise Conflict(f"incident {incident_id} is already resolved")
            incident.update(status=RESOLVED, resolved_by=actor, resolved_at=time.time(), resolution=note)
        incident = await self._event(incident_id, change, {"type": "resolved", "by": actor, "text": note})
        try:
            await self.gw.store.delete(CAUSES, incident["cause"])  # the same cause may open a new incident now
        except Exception:
            log.exception("could not release the cause of incident %s", incident_id)
        return incident

    async def get(self, incident_id: str) -> dict[str, Any]:
        incident = await self.gw.store.get(INCIDENTS, incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id!r}")
        return incident

    async def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await self.gw.store.query(INCIDENTS, where={"status": status} if status else None, limit=limit)

    # containment -----------------------------------------------------------------------
    async def _contain(self, incident: dict[str, Any], *, raise_to: int | None, rollback: bool) -> None:
        model, actor = incident["model"], f"incident:{incident['id']}"
        if raise_to is not None:
            await self._action(incident, "raise level", self._raise(model, raise_to, actor, incident["summary"]))
        await self._action(incident, "legal hold", self._hold(incident, actor))
        if model:
            await self._action(incident, "snapshot", self._snapshot(incident, actor))
        if rollback and model:
            await self._action(incident, "rollback", self.gw.switcher.rollback(model, to=None, actor=actor,
                                                                              reason=f"incident {incident['id']}: {incident['summary']}"))
        await self.gw.notifier.enqueue(await self.get(incident["id"]), "detected")

    async def _raise(self, model: str | None, level: int, actor: str, reason: str) -> str:
        current, _ = self.gw.levels.current(model)
        if current >= level:
            return f"level already {current} (>= {level}); left as it is"
        result = await self.gw.levels.set_level(level, model=model, actor=actor, reason=reason, action="incident_raise")
        return f"{model or 'global'} level {result['previous']} -> {result['level']} (applied by {result['applied_by']}/{result['replicas']})"

    async def _hold(self, incident: dict[str, Any], actor: str) -> str:
        log_ = getattr(self.gw.recorder, "log", None)
        if log_ is None:
            return "no evidence log configured: nothing to hold"
        hold_id = f"hold_{incident['id']}"
        since = incident["window"]["since"]
        await asyncio.to_thread(log_.set_legal_hold, hold_id, since, None, f"incident {incident['id']}", actor)
        await self._update(incident["id"], lambda i: i.update(hold=hold_id))
        return f"evidence since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(since))}Z held ({hold_id})"

    async def _snapshot(self, incident: dict[str, Any], actor: str) -> str:
        model, version = incident["model"], incident["version"] or self.gw.state.active.get(incident["model"])
        index = await self.gw.recorder.action("incident_snapshot", actor=actor, reason=incident["summary"],
                                              incident=incident["id"], model=model, version=version,
                                              snapshot=self.gw.switcher.snapshot(model, version))
        return f"state of {model} {version} recorded (evidence record {index})"

    async def _action(self, incident: dict[str, Any], name: str, work) -> None:
        try:
            result, ok = await work, True
            if isinstance(result, dict):  # a rollback's answer
                result = f"{result.get('from')} -> {result.get('to')}"
        except GatewayError as exc:
            result, ok = exc.message, False
        except Exception as exc:  # containment must go on whatever one step does
            log.exception("incident %s: %s failed", incident["id"], name)
            result, ok = f"{exc.__class__.__name__}: {exc}", False
        entry = {"action": name, "ok": ok, "result": str(result), "at": time.time()}
        await self._update(incident["id"], lambda i: (i["actions"].append(entry),
                                                      i["timeline"].append({"at": entry["at"], "type": "action",
                                                                            "by": "gateway", "text": f"{name}: {result}",
                                                                            "ok": ok})))
        await self.gw.recorder.action("incident_action", actor=f"incident:{incident['id']}", reason=name,
                                      incident=incident["id"], ok=ok, result=str(result))

    # bookkeeping -----------------------------------------------------------------------
    async def _open_for(self, cause: str) -> dict[str, Any] | None:
        claim = await self.gw.store.get(CAUSES, cause)
        if claim is None:
            return None
        incident = await self.gw.store.get(INCIDENTS, claim["incident"])
        if incident is None or incident["status"] == RESOLVED:
            await self.gw.store.delete(CAUSES, cause)  # a claim left by a crash, or an incident already closed
            return None
        return incident

    async def _repeat(self, incident: dict[str, Any], cause: str, values: dict[str, Any], now: float) -> None:
        claim = await self.gw.store.get(CAUSES, cause)
        if claim is None or now - claim.get("last_repeat", 0) < REPEAT_EVERY:
            return
        try:
            await self.gw.store.update(CAUSES, cause, {**claim, "last_repeat": now}, expect={"last_repeat": claim["last_repeat"]})
        except StaleWrite:
            return  # another replica noted this repeat
        await self._update(incident["id"], lambda i: i["timeline"].append(
            {"at": now, "type": "repeat", "by": "gateway", "text": "the trigger is still firing", "values": values}))

    async def _event(self, incident_id: str, change, event: dict[str, Any]) -> dict[str, Any]:
        event = {"at": time.time(), **event}

        def apply(incident: dict[str, Any]) -> None:
            change(incident)
            incident["timeline"].append(event)
        incident = await self._update(incident_id, apply)
        await self.gw.recorder.action(f"incident_{event['type']}", actor=event["by"], reason=event.get("text") or event["type"],
                                      incident=incident_id)
        await self.gw.notifier.enqueue(incident, event["type"], note=event.get("text"), by=event["by"])
        return incident

    async def _update(self, incident_id: str, change) -> dict[str, Any]:
        """Read, change, compare-and-set; again if another replica changed it meanwhile."""
        for _ in range(20):
            incident = await self.get(incident_id)
            before = {"status": incident["status"], "updated": incident.get("updated", 0)}
            change(incident)
            incident["updated"] = before["updated"] + 1
            try:
                await self.gw.store.update(INCIDENTS, incident_id, incident, expect=before)
                return incident
            except StaleWrite:
                await asyncio.sleep(0.01)
        raise Conflict(f"incident {incident_id} keeps changing; try again")
