"""Changing oversight levels: raise at once, lower from 3 or 4 only with a second operator, kill.

Every change is durable in the store before it answers, answers only once every live
replica applied it (or names the ones that did not), and records who and why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from typing import Any, Protocol

from gateway.control import keys
from gateway.control.state import ControlState
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.policy import Oversight
from gateway.recorder import Recorder
from gateway.store import AuditTrail, Collections, StaleWrite

CHANGES = "level_changes"


class LevelStore(Collections, AuditTrail, Protocol):
    """Pending two-person changes live in a collection; the history is the control state's audit trail."""


class LevelControl:
    def __init__(self, state: ControlState, store: LevelStore, oversight: Oversight, models: Collection[str],
                 recorder: Recorder) -> None:
        self.state = state
        self.store = store
        self.oversight = oversight
        self.models = models
        self.recorder = recorder

    def current(self, model: str | None) -> tuple[int, dict[str, Any] | None]:
        doc = self.state.doc(keys.level(model))
        return (int(doc["level"]) if doc else self.oversight.initial_level), doc

    async def set_level(self, level: int, *, model: str | None, actor: str, reason: str, action: str = "set_level") -> dict[str, Any]:
        """Apply a change, or file it for a second operator when it lowers a level that is 3 or 4."""
        self._check(level, model, reason)
        previous, doc = self.current(model)
        if level < previous and previous >= 3 and self.oversight.two_person_lowering:
            return await self._file_pending(level, previous, model=model, actor=actor, reason=reason)
        return await self._apply(level, previous, doc, model=model, actor=actor, reason=reason, action=action)

    async def kill(self, *, model: str | None, actor: str, reason: str) -> dict[str, Any]:
        return await self.set_level(4, model=model, actor=actor, reason=reason, action="kill")

    async def approve(self, change_id: str, *, actor: str, reason: str | None = None) -> dict[str, Any]:
        change = await self.store.get(CHANGES, change_id)
        if change is None:
            raise NotFound(f"no pending level change {change_id!r}")
        if change["status"] != "pending":
            raise Conflict(f"level change {change_id} is already {change['status']}")
        if change["requested_by"] == actor:
            raise Forbidden(f"{actor} requested this change; a second, different operator must approve it")
        model = change.get("model")
        previous, doc = self.current(model)
        if previous != change["from"]:
            await self._close(change, "superseded", actor)
            raise Conflict(f"the level changed meanwhile (now {previous}, the request was from {change['from']}); file it again")
        try:
            await self.store.update(CHANGES, change_id, {**change, "status": "approving"}, expect={"status": "pending"})
        except StaleWrite:
            raise Conflict(f"level change {change_id} was decided meanwhile") from None
        result = await self._apply(
            change["to"], previous, doc, model=model, actor=change["requested_by"], reason=change["reason"],
            action="lower_approved", approved_by=actor, approval_reason=reason,
        )
        await self._close({**change, "status": "approving"}, "applied", actor, result.get("epoch"))
        return result

    async def pending(self) -> list[dict[str, Any]]:
        return await self.store.query(CHANGES, where={"status": "pending"}, limit=100)

    async def describe(self) -> dict[str, Any]:
        glevel, gdoc = self.current(None)
        models = {}
        for name in self.models:
            own, doc = self.current(name)
            models[name] = {"level": own, "effective": self.state.level_for(name), **_who(doc)}
        history = await self.store.audit_log(key_prefix=keys.LEVELS, limit=200)
        return {
            "global": {"level": glevel, **_who(gdoc)},
            "models": models,
            "stale": self.state.is_stale(),
            "replica": self.state.replica_id,  # the replica that answered (one of several behind a port or balancer)
            "pending_changes": await self.pending(),
            "history": history,
        }

    # ---------------------------------------------------------------------------------
    def _check(self, level: int, model: str | None, reason: str) -> None:
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 4:
            raise BadRequest(f"level must be an integer from 0 to 4 (got {level!r})")
        if not reason or not reason.strip():
            raise BadRequest("a reason is required for every level change")
        if model is not None and model not in self.models:
            raise NotFound(f"unknown model {model!r}; known models: {', '.join(sorted(self.models))}")

    async def _apply(self, level: int, previous: int, doc: dict[str, Any] | None, *, model: str | None, actor: str,
                     reason: str, action: str, approved_by: str | None = None, approval_reason: str | None = None) -> dict[str, Any]:
        now = time.time()
        new_doc: dict[str, Any] = {"level": level, "actor": actor, "reason": reason, "at": now}
        audit: dict[str, Any] = {"action": action, "actor": actor, "reason": reason, "from": previous, "to": level, "at": now}
        if approved_by:
            new_doc["approved_by"] = audit["approved_by"] = approved_by
            if approval_reason:
                audit["approval_reason"] = approval_reason
        try:
            change, confirmation = await self.state.change(
                keys.level(model), new_doc, audit=audit, expect_rev=(doc or {}).get("rev", 0),
                confirm_timeout=self.oversight.confirm_timeout,
            )
        except StaleWrite as exc:
            now_level = (exc.current or {}).get("level")
            raise Conflict(f"the level was changed meanwhile (now {now_level}); read it again and retry") from None
        await self.recorder.action(action, actor=actor, reason=reason, scope="global" if model is None else "model",
                             model=model, level_from=previous, level_to=level, epoch=change.epoch, approved_by=approved_by)
        return {"scope": "global" if model is None else "model", "model": model, "level": level, "previous": previous,
                "status": "applied", **confirmation.as_dict()}

    async def _file_pending(self, level: int, previous: int, *, model: str | None, actor: str, reason: str) -> dict[str, Any]:
        change = {
            "id": "lc_" + os.urandom(8).hex(), "status": "pending", "model": model, "from": previous, "to": level,
            "requested_by": actor, "reason": reason, "created_at": time.time(),
        }
        await self.store.insert(CHANGES, change["id"], change)
        await self.recorder.action("lower_requested", actor=actor, reason=reason, model=model, level_from=previous,
                             level_to=level, change=change["id"])
        return {"scope": "global" if model is None else "model", "model": model, "level": previous, "previous": previous,
                "status": "pending_approval", "change": change,
                "message": f"lowering from {previous} needs a second operator: POST /admin/oversight/changes/{change['id']}/approve"}

    async def _close(self, change: dict[str, Any], status: str, actor: str, epoch: int | None = None) -> None:
        try:
            await self.store.update(CHANGES, change["id"], {**change, "status": status, "closed_by": actor,
                                                                  "closed_at": time.time(), "epoch": epoch},
                                          expect={"status": change["status"]})
        except StaleWrite:
            pass


def _who(doc: dict[str, Any] | None) -> dict[str, Any]:
    if not doc:
        return {"set_by": None, "at": None, "reason": None, "epoch": None}
    out = {"set_by": doc.get("actor"), "at": doc.get("at"), "reason": doc.get("reason"), "epoch": doc.get("rev")}
    if doc.get("approved_by"):
        out["approved_by"] = doc["approved_by"]
    return out
