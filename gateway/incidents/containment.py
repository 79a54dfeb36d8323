"""Containment: what opening an incident does at once (seed, "Immediate Actions").

Raise the model's oversight level as the orders say (never lower it), put the evidence
of the incident's window under legal hold, record a snapshot of the model's state, roll
back if ordered, and notify. Each step's result goes on the incident; a step that fails
is reported and the others still run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from gateway.incidents.records import Incident
from gateway.incidents.sink import Orders


class Levels(Protocol):
    def current(self, model: str | None) -> tuple[int, dict[str, Any] | None]: ...

    async def set_level(self, level: int, *, model: str | None, actor: str, reason: str, action: str = ...) -> dict[str, Any]: ...


class Rollback(Protocol):
    async def rollback(self, model: str, *, to: str | None, actor: str, reason: str) -> dict[str, Any]: ...


class Snapshots(Protocol):
    def snapshot(self, model: str, version: str | None) -> dict[str, Any]: ...


class LegalHolds(Protocol):
    def set_legal_hold(self, hold_id: str, since: float | None, until: float | None, reason: str, actor: str) -> int: ...


class Revoker(Protocol):
    async def revoke(self, token_id: str, *, actor: str, reason: str) -> dict[str, Any]: ...


class RetroReview(Protocol):
    async def start(self, incident_id: str, *, group: str | None, outcome: str | None, actor: str,
                    reason: str) -> dict[str, Any]: ...


class ActionRecorder(Protocol):
    async def action(self, kind: str, *, actor: str, reason: str, **details: Any) -> int | None: ...


HOLD_STEP = "legal hold"


def hold_id(incident: Incident) -> str:
    """The legal hold an incident puts on its window's evidence."""
    return f"hold_{incident.id}"


class Containment:
    def __init__(self, *, levels: Levels, rollback: Rollback, snapshots: Snapshots, holds: LegalHolds | None,
                 recorder: ActionRecorder) -> None:
        self.levels = levels
        self.rollback_ = rollback
        self.snapshots = snapshots
        self.holds = holds
        self.recorder = recorder
        self.revoker: Revoker | None = None
        self.retro: RetroReview | None = None

    def revoke_with(self, revoker: Revoker) -> None:
        self.revoker = revoker

    def review_with(self, retro: RetroReview) -> None:
        self.retro = retro

    def steps(self, incident: Incident, orders: Orders) -> list[tuple[str, Any]]:
        """The containment steps for `incident`, in order, as (name, awaitable) pairs."""
        actor = f"incident:{incident.id}"
        steps: list[tuple[str, Any]] = []
        if orders.revoke_token is not None:  # first: "revoke compromised credentials immediately"
            steps.append(("revoke credentials", self._revoke(orders.revoke_token, actor, incident)))
        if orders.raise_to is not None:
            steps.append(("raise level", self._raise(incident.model, orders.raise_to, actor, incident.summary)))
        steps.append((HOLD_STEP, self._hold(incident, actor)))
        if incident.model:
            steps.append(("snapshot", self._snapshot(incident, actor)))
            if orders.rollback:
                steps.append(("rollback", self._rollback(incident, actor)))
            if orders.retro_review:
                steps.append(("retro-review", self._retro(incident, actor)))
        return steps

    async def _revoke(self, token_id: str, actor: str, incident: Incident) -> str:
        if self.revoker is None:
            raise RuntimeError("no credential store to revoke with")
        result = await self.revoker.revoke(token_id, actor=actor, reason=f"incident {incident.id}: {incident.summary}")
        if result.get("already"):
            return f"token {token_id} was already revoked"
        return f"token {token_id} revoked (applied by {result.get('applied_by')}/{result.get('replicas')})"

    async def _retro(self, incident: Incident, actor: str) -> str:
        if self.retro is None:
            raise RuntimeError("no review queue to retro-review with")
        result = await self.retro.start(incident.id, group=None, outcome=None, actor=actor,
                                        reason="the trigger's orders: audit the window's decisions")
        return f"{result['total']} decision(s) queued for retro-review ({result['id']})"

    async def _raise(self, model: str | None, level: int, actor: str, reason: str) -> str:
        current, _ = self.levels.current(model)
        if current >= level:
            return f"level already {current} (>= {level}); left as it is"
        result = await self.levels.set_level(level, model=model, actor=actor, reason=reason, action="incident_raise")
        return (f"{model or 'global'} level {result['previous']} -> {result['level']} "
                f"(applied by {result['applied_by']}/{result['replicas']})")

    async def _hold(self, incident: Incident, actor: str) -> str:
        if self.holds is None:
            return "no evidence log configured: nothing to hold"
        held = hold_id(incident)
        await asyncio.to_thread(self.holds.set_legal_hold, held, incident.since, None, f"incident {incident.id}", actor)
        return f"evidence since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(incident.since))}Z held ({held})"

    async def _snapshot(self, incident: Incident, actor: str) -> str:
        model, version = incident.model, incident.version
        index = await self.recorder.action("incident_snapshot", actor=actor, reason=incident.summary,
                                           incident=incident.id, model=model, version=version,
                                           snapshot=self.snapshots.snapshot(model, version))  # type: ignore[arg-type]
        return f"state of {model} {version} recorded (evidence record {index})"

    async def _rollback(self, incident: Incident, actor: str) -> str:
        result = await self.rollback_.rollback(incident.model, to=None, actor=actor,  # type: ignore[arg-type]
                                               reason=f"incident {incident.id}: {incident.summary}")
        return f"{result.get('from')} -> {result.get('to')}"
