"""Incidents: opened once per cause, contained at once, tracked until a human resolves them.

A `Detection` (from a trigger, the integrity gate or an operator) opens an incident and
runs its containment (`gateway.incidents.containment`), then notifies. Every step and its
result goes on the incident's timeline and into the evidence log.

One cause, one incident: replicas that see the same trigger race to claim the cause with
a compare-and-set; the losers add to the winner's timeline instead (at most once a minute).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, Protocol

from gateway.errors import BadRequest, Conflict, GatewayError, NotFound
from gateway.incidents.containment import HOLD_STEP, Containment, hold_id
from gateway.incidents.records import (ACKNOWLEDGED, CATEGORIES, OPEN, RESOLVED, ROLES, SEVERITIES, ActionTaken, Event,
                                       Incident)
from gateway.incidents.sink import Detection, Orders
from gateway.policy import Triggers
from gateway.recorder import Recorder
from gateway.store import Collections, StaleWrite

log = logging.getLogger("gateway.incidents")

INCIDENTS, CAUSES = "incidents", "incident_causes"
REPEAT_EVERY = 60.0


class Notifications(Protocol):
    async def enqueue(self, incident: Incident, event: str, *, note: str | None = None, by: str | None = None) -> int: ...


class IncidentManager:
    def __init__(self, store: Collections, recorder: Recorder, containment: Containment, notifier: Notifications, *,
                 triggers: Triggers, models: Collection[str], active: Mapping[str, str]) -> None:
        self.store = store
        self.recorder = recorder
        self.containment = containment
        self.notifier = notifier
        self.triggers = triggers
        self.models = models
        self.active = active
        self._on_open: list[Callable[[Incident], Any]] = []

    def on_open(self, follow_up: Callable[[Incident], Any]) -> None:
        """Called with each incident this replica opened, once contained (e.g. to start its verification)."""
        self._on_open.append(follow_up)

    # IncidentSink ----------------------------------------------------------------------
    async def raise_incident(self, detection: Detection) -> Incident:
        """Open an incident for this cause, or add to the open one. Returns the incident."""
        cause = f"{detection.trigger}:{detection.model or '*'}:{detection.version or '*'}"
        now = time.time()
        existing = await self._open_for(cause)
        if existing is not None:
            await self._repeat(existing, cause, detection.values, now)
            return existing
        since = detection.since if detection.since is not None else now - 3600
        incident = Incident(
            id="inc_" + os.urandom(6).hex(), cause=cause, status=OPEN, category=detection.category,
            trigger=detection.trigger, severity=detection.severity, model=detection.model, version=detection.version,
            summary=detection.summary, values=detection.values, since=since,
            until=detection.until if detection.until is not None else now, opened_at=now, opened_by=detection.actor,
            timeline=(Event(now, "detected", detection.actor, detection.summary, detection.values),),
        )
        try:
            await self.store.insert(CAUSES, cause, {"id": cause, "incident": incident.id, "last_repeat": now})
        except StaleWrite:  # another replica opened it a moment ago
            existing = await self._open_for(cause)
            if existing is not None:
                await self._repeat(existing, cause, detection.values, now)
                return existing
            raise Conflict("incident state changed meanwhile; try again") from None
        await self.store.insert(INCIDENTS, incident.id, incident.to_doc())
        log.error("incident %s opened: %s", incident.id, incident.summary,
                  extra={"incident": incident.id, "trigger": incident.trigger, "severity": incident.severity,
                         "model": incident.model})
        await self.recorder.action("incident_opened", actor=detection.actor, reason=incident.summary, incident=incident.id,
                                   category=incident.category, trigger=incident.trigger, severity=incident.severity,
                                   model=incident.model, version=incident.version, values=incident.values)
        await self._contain(incident, self._orders(detection))
        opened = await self.get(incident.id)
        for follow_up in self._on_open:
            try:
                follow_up(opened)
            except Exception:
                log.exception("incident %s: a follow-up failed to start", incident.id)
        return opened

    def _orders(self, detection: Detection) -> Orders:
        """The finder's orders, or else the trigger's policy (a trigger the policy does not name: notify only).

        The trigger's policy adds what a finder does not decide: a retro-review of the window,
        and revoking the token the finding names (`values.token`).
        """
        configured = getattr(self.triggers, detection.trigger, None)
        if detection.orders is not None:
            orders = detection.orders
        elif configured is None:
            return Orders()
        else:
            orders = Orders(configured.raise_to, configured.rollback)
        if configured is not None:
            named = detection.values.get("token") if getattr(configured, "revoke_token", False) else None
            orders = replace(orders, retro_review=orders.retro_review or getattr(configured, "retro_review", False),
                             revoke_token=orders.revoke_token or (str(named) if named else None))
        return orders

    # operators -------------------------------------------------------------------------
    async def open_by_hand(self, *, category: str, severity: str, model: str | None, summary: str, actor: str,
                           raise_to: int | None, revoke_token: str | None = None) -> Incident:
        if category not in CATEGORIES:
            raise BadRequest(f"category must be one of {', '.join(CATEGORIES)}")
        if severity not in SEVERITIES:
            raise BadRequest(f"severity must be one of {', '.join(SEVERITIES)}")
        if model is not None and model not in self.models:
            raise NotFound(f"unknown model {model!r}")
        return await self.raise_incident(Detection(
            category=category, trigger=f"manual-{os.urandom(3).hex()}", severity=severity, summary=summary, model=model,
            version=self.active.get(model) if model else None, orders=Orders(raise_to, False, revoke_token=revoke_token),
            actor=actor,
        ))

    async def acknowledge(self, incident_id: str, *, actor: str, note: str | None) -> Incident:
        def change(incident: Incident, event: Event) -> Incident:
            if incident.status != OPEN:
                raise Conflict(f"incident {incident_id} is {incident.status}, not open")
            return incident.with_event(event, status=ACKNOWLEDGED, acknowledged_by=actor, acknowledged_at=event.at)
        return await self._event(incident_id, change, Event(time.time(), "acknowledged", actor, note or ""))

    async def note(self, incident_id: str, *, actor: str, text: str) -> Incident:
        if not text.strip():
            raise BadRequest("a note needs text")
        return await self._event(incident_id, lambda incident, event: incident.with_event(event),
                                 Event(time.time(), "note", actor, text))

    async def resolve(self, incident_id: str, *, actor: str, note: str) -> Incident:
        if not note or not note.strip():
            raise BadRequest("resolving an incident needs a note: what was found and done")

        def change(incident: Incident, event: Event) -> Incident:
            if incident.status == RESOLVED:
                raise Conflict(f"incident {incident_id} is already resolved")
            return incident.with_event(event, status=RESOLVED, resolved_by=actor, resolved_at=event.at, resolution=note)
        incident = await self._event(incident_id, change, Event(time.time(), "resolved", actor, note))
        try:
            await self.store.delete(CAUSES, incident.cause)  # the same cause may open a new incident now
        except Exception:
            log.exception("could not release the cause of incident %s", incident_id)
        return incident

    async def assign(self, incident_id: str, *, role: str, who: str, actor: str) -> Incident:
        """Give one of the command roles to a person; notifies the targets routed to that role."""
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        if not who.strip():
            raise BadRequest("name who takes the role (`who`)")
        now = time.time()

        def change(incident: Incident, event: Event) -> Incident:
            return incident.with_event(event, roles={**incident.roles, role: {"who": who, "by": actor, "at": now}})
        return await self._event(incident_id, change, Event(now, "assigned", actor, f"{role}: {who}",
                                                            {"role": role, "who": who}))

    async def add_event(self, incident_id: str, event: Event) -> Incident:
        """Put a finding on an incident's timeline (verification, watch, retro-review), and into the evidence log."""
        incident = await self._update(incident_id, lambda i: i.with_event(event))
        await self.recorder.action(f"incident_{event.type}", actor=event.by, reason=event.text or event.type,
                                   incident=incident_id, model=incident.model, values=event.values)
        return incident

    async def open_critical(self, model: str) -> list[str]:
        """Ids of the critical incidents open or acknowledged for `model`."""
        found = []
        for status in (OPEN, ACKNOWLEDGED):
            for doc in await self.store.query(INCIDENTS, where={"status": status}, limit=1000):
                if doc.get("severity") == "critical" and doc.get("model") == model:
                    found.append(doc["id"])
        return found

    async def open_for_model(self, model: str) -> list[Incident]:
        """The incidents not yet resolved for `model`, newest first."""
        out = []
        for status in (OPEN, ACKNOWLEDGED):
            out += [Incident.from_doc(d) for d in await self.store.query(INCIDENTS, where={"status": status}, limit=1000)
                    if d.get("model") == model]
        return sorted(out, key=lambda i: -i.opened_at)

    async def get(self, incident_id: str) -> Incident:
        doc = await self.store.get(INCIDENTS, incident_id)
        if doc is None:
            raise NotFound(f"no incident {incident_id!r}")
        return Incident.from_doc(doc)

    async def list(self, status: str | None = None, limit: int = 100) -> list[Incident]:
        docs = await self.store.query(INCIDENTS, where={"status": status} if status else None, limit=limit)
        return [Incident.from_doc(doc) for doc in docs]

    # containment -----------------------------------------------------------------------
    async def _contain(self, incident: Incident, orders: Orders) -> None:
        for name, work in self.containment.steps(incident, orders):
            taken = await self._act(incident, name, work)
            if name == HOLD_STEP and taken.ok:
                await self._update(incident.id, lambda i: replace(i, hold=hold_id(i)))
        await self.notifier.enqueue(await self.get(incident.id), "detected")

    async def _act(self, incident: Incident, name: str, work) -> ActionTaken:
        try:
            result, ok = await work, True
        except GatewayError as exc:
            result, ok = exc.message, False
        except Exception as exc:  # containment must go on whatever one step does
            log.exception("incident %s: %s failed", incident.id, name)
            result, ok = f"{exc.__class__.__name__}: {exc}", False
        taken = ActionTaken(name, ok, str(result), time.time())
        event = Event(taken.at, "action", "gateway", f"{name}: {result}", ok=ok)
        await self._update(incident.id, lambda i: i.with_event(event, actions=i.actions + (taken,)))
        await self.recorder.action("incident_action", actor=f"incident:{incident.id}", reason=name,
                                   incident=incident.id, ok=ok, result=str(result))
        return taken

    # bookkeeping -----------------------------------------------------------------------
    async def _open_for(self, cause: str) -> Incident | None:
        claim = await self.store.get(CAUSES, cause)
        if claim is None:
            return None
        doc = await self.store.get(INCIDENTS, claim["incident"])
        if doc is None or doc["status"] == RESOLVED:
            await self.store.delete(CAUSES, cause)  # a claim left by a crash, or an incident already closed
            return None
        return Incident.from_doc(doc)

    async def _repeat(self, incident: Incident, cause: str, values: dict[str, Any], now: float) -> None:
        claim = await self.store.get(CAUSES, cause)
        if claim is None or now - claim.get("last_repeat", 0) < REPEAT_EVERY:
            return
        try:
            await self.store.update(CAUSES, cause, {**claim, "last_repeat": now}, expect={"last_repeat": claim["last_repeat"]})
        except StaleWrite:
            return  # another replica noted this repeat
        event = Event(now, "repeat", "gateway", "the trigger is still firing", values)
        await self._update(incident.id, lambda i: i.with_event(event))

    async def _event(self, incident_id: str, change: Callable[[Incident, Event], Incident], event: Event) -> Incident:
        incident = await self._update(incident_id, lambda i: change(i, event))
        await self.recorder.action(f"incident_{event.type}", actor=event.by, reason=event.text or event.type,
                                   incident=incident_id)
        await self.notifier.enqueue(incident, event.type, note=event.text, by=event.by)
        return incident

    async def _update(self, incident_id: str, change: Callable[[Incident], Incident]) -> Incident:
        """Read, change, compare-and-set; again if another replica changed it meanwhile."""
        for _ in range(20):
            current = await self.get(incident_id)
            updated = replace(change(current), updated=current.updated + 1)
            try:
                await self.store.update(INCIDENTS, incident_id, updated.to_doc(),
                                        expect={"status": current.status, "updated": current.updated})
                return updated
            except StaleWrite:
                await asyncio.sleep(0.01)
        raise Conflict(f"incident {incident_id} keeps changing; try again")
