"""The operator dashboard: levels, the kill switch, versions, approvals, incidents, the audit trail.

Every action calls the same domain function as the JSON API (level control, the
switcher, the incident manager) with the session's caller as the actor, after the server
checked the session's role and CSRF token.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.console.session import Session, Sessions
from gateway.console.web import LEVEL_NAMES, Outcome, action, field, page, render
from gateway.control.state import ControlState
from gateway.errors import BadRequest
from gateway.incidents import signals
from gateway.incidents.counters import TrafficCounters
from gateway.incidents.reports import report_counts
from gateway.incidents.manager import IncidentManager
from gateway.incidents.records import ROLES
from gateway.oversight.levels import LevelControl
from gateway.review.queue import ReviewQueue
from gateway.review.tickets import PENDING
from gateway.store import AuditTrail
from gateway.versions.registry import Registry
from gateway.versions.switch import Switcher

CHART_MINUTES = 60
CHART_W, CHART_H = 300, 64
HISTORY_SHOWN = 6


# traffic over the last hour -----------------------------------------------------------------
async def minute_traffic(counters: TrafficCounters, model: str, versions) -> list[dict[str, float]]:
    """The model's last 60 minute buckets, oldest first, summed over its versions and every replica."""
    out: list[dict[str, float]] = [{} for _ in range(CHART_MINUTES)]
    for version in versions:
        newest_first = await counters.recent_minutes(model, version, CHART_MINUTES)
        for i, bucket in enumerate(reversed(newest_first)):
            for name, value in bucket.items():
                out[i][name] = out[i].get(name, 0.0) + value
    return out


def chart(minutes: list[dict[str, float]]) -> dict[str, Any]:
    """Geometry for two small SVG charts (requests with errors; p50 latency) and the hour's figures."""
    totals: dict[str, float] = {}
    for bucket in minutes:
        for name, value in bucket.items():
            totals[name] = totals.get(name, 0.0) + value
    step = CHART_W / len(minutes)
    peak = max((b.get("requests", 0.0) for b in minutes), default=0.0) or 1.0
    bars, errors, points = [], [], []
    p50s = [signals.p50_ms(b, min_count=1) for b in minutes]
    top = max((p for p in p50s if p is not None), default=0.0) or 1.0
    segments: list[list[str]] = []
    current: list[str] = []
    for i, (bucket, p50) in enumerate(zip(minutes, p50s)):
        x = round(i * step, 1)
        requests, errs = bucket.get("requests", 0.0), bucket.get("errors", 0.0)
        if requests:
            h = max(1.0, (CHART_H - 4) * requests / peak)
            bars.append({"x": x, "y": round(CHART_H - h, 1), "w": round(step - 1, 1), "h": round(h, 1)})
        if errs:
            h = max(1.0, (CHART_H - 4) * errs / peak)
            errors.append({"x": x, "y": round(CHART_H - h, 1), "w": round(step - 1, 1), "h": round(h, 1)})
        if p50 is None:
            if current:
                segments.append(current)
                current = []
            continue
        y = round(CHART_H - 2 - (CHART_H - 8) * p50 / top, 1)
        cx = round(x + step / 2, 1)
        current.append(f"{cx},{y}")
        points.append({"x": cx, "y": y})
    if current:
        segments.append(current)
    requests = totals.get("requests", 0.0)
    rate = signals.error_rate(totals, min_requests=1)
    p50 = signals.p50_ms(totals, min_count=1)
    return {
        "w": CHART_W, "h": CHART_H, "bars": bars, "errors": errors,
        "lines": [" ".join(s) for s in segments if len(s) > 1], "points": points,
        "requests": int(requests), "errors_n": int(totals.get("errors", 0.0)),
        "error_rate": rate, "p50": p50, "peak_rpm": int(peak if requests else 0), "peak_p50": top if p50 is not None else None,
    }


# the page and its actions ---------------------------------------------------------------------
def _scope(form) -> str | None:
    scope = field(form, "scope", required=True, max_length=200, what="the scope")
    return None if scope == "global" else scope


def _name(model: str | None) -> str:
    return "global" if model is None else model


def _applied(result: dict[str, Any]) -> str:
    text = f"applied on {result.get('applied_by')}/{result.get('replicas')} replica(s)"
    if result.get("unconfirmed"):
        text += f"; NOT yet confirmed by {', '.join(result['unconfirmed'])}"
    return text


class Dashboard:
    def __init__(self, sessions: Sessions, state: ControlState, levels: LevelControl, registry: Registry,
                 switcher: Switcher, incidents: IncidentManager, queue: ReviewQueue, counters: TrafficCounters,
                 audit: AuditTrail, *, max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES, retro: Any = None) -> None:
        self.sessions = sessions
        self.retro = retro  # retro-reviews' progress per incident (gateway.incidents.retro)
        self.max_body_bytes = max_body_bytes
        self.state = state
        self.levels = levels
        self.registry = registry
        self.switcher = switcher
        self.incidents = incidents
        self.queue = queue
        self.counters = counters
        self.audit = audit

    def routes(self) -> list[Route]:
        return [
            Route("/console", self.dashboard_page, methods=["GET"]),
            Route("/console/levels", self.set_level, methods=["POST"]),
            Route("/console/kill", self.kill, methods=["POST"]),
            Route("/console/changes/{id}/approve", self.approve_change, methods=["POST"]),
            Route("/console/models/{model:path}/activate", self.activate, methods=["POST"]),
            Route("/console/models/{model:path}/rollback", self.rollback, methods=["POST"]),
            Route("/console/incidents/{id}/ack", self.acknowledge, methods=["POST"]),
            Route("/console/incidents/{id}/notes", self.add_note, methods=["POST"]),
            Route("/console/incidents/{id}/resolve", self.resolve, methods=["POST"]),
            Route("/console/incidents/{id}/roles", self.assign_role, methods=["POST"]),
        ]

    async def overview(self) -> dict[str, Any]:
        pending = await self.queue.list(status=PENDING, limit=1000)
        models = []
        for name in sorted(self.registry.models()):
            own, doc = self.levels.current(name)
            active = self.state.active.get(name)
            versions = self.registry.versions(name)
            waiting = [t for t in pending if t.model == name]
            if len(pending) >= 1000:  # the shared read was cut short: count this model on its own
                waiting = await self.queue.list(status=PENDING, model=name, limit=1000)
            earlier = [v for v in await self.switcher.previously_active(name) if v != active and v in versions]
            models.append({
                "name": name, "effective": self.state.level_for(name), "own": own, "set_by": (doc or {}).get("actor"),
                "set_reason": (doc or {}).get("reason"), "active": active, "versions": versions,
                "verification": versions.get(active, {}) if active else {},
                "queue": len(waiting), "samples": sum(1 for t in waiting if t.kind == "sample"),
                "history": (await self.switcher.history(name))[:HISTORY_SHOWN], "earlier": earlier,
                "chart": chart(await minute_traffic(self.counters, name, versions)),
                "reports": await report_counts(self.counters, name, active),  # users' reports, last 24 h
            })
        glevel, gdoc = self.levels.current(None)
        incidents = await self.incidents.list("open") + await self.incidents.list("acknowledged")
        incidents.sort(key=lambda i: i.opened_at, reverse=True)
        return {
            "global_level": glevel, "global_doc": gdoc or {}, "models": models, "approvals": await self.levels.pending(),
            "incidents": [{**i.to_doc(), "retro_reviews": await self.retro.of_incident(i.id) if self.retro else []}
                          for i in incidents],
            "incident_roles": ROLES, "audit": await self.audit.audit_log(limit=50),
            "stale": self.state.is_stale(),
        }

    @page("operator")
    async def dashboard_page(self, request: Request, session: Session) -> Response:
        data = await self.overview()
        return render(request, "dashboard.html", {"title": "Operator dashboard", **data}, session=session)

    @action("operator")
    async def set_level(self, request: Request, session: Session, form) -> Outcome:
        model = _scope(form)
        raw = field(form, "level", required=True, what="the level")
        if raw not in ("0", "1", "2", "3", "4"):
            raise BadRequest(f"the level must be 0 to 4 (got {raw!r})")
        reason = field(form, "reason", required=True, what="a reason")
        result = await self.levels.set_level(int(raw), model=model, actor=session.caller, reason=reason)
        if result["status"] == "pending_approval":
            change = result["change"]
            return Outcome(f"Lowering {_name(model)} from {change['from']} to {change['to']} needs a second operator: "
                           f"change {change['id']} waits for approval (the level stays {result['level']}).", result,
                           status=202, back="/console")
        return Outcome(f"{_name(model)} level {result['previous']} → {result['level']} "
                       f"({LEVEL_NAMES[result['level']]}), {_applied(result)}.", result, back="/console")

    @action("operator")
    async def kill(self, request: Request, session: Session, form) -> Outcome:
        model = _scope(form)
        reason = field(form, "reason", required=True, what="a reason")
        if form.get("confirm") != "yes":
            raise BadRequest("confirm the kill switch: tick the box that says every request becomes a human task")
        result = await self.levels.kill(model=model, actor=session.caller, reason=reason)
        return Outcome(f"Kill switch pulled: {_name(model)} is at level 4 (System pause); the model is not called, "
                       f"every request becomes a human task. {_applied(result).capitalize()}.", result, back="/console")

    @action("operator")
    async def approve_change(self, request: Request, session: Session, form) -> Outcome:
        reason = field(form, "reason", what="the reason") or None
        result = await self.levels.approve(request.path_params["id"], actor=session.caller, reason=reason)
        return Outcome(f"Approved {request.path_params['id']}: {_name(result['model'])} level {result['previous']} → "
                       f"{result['level']}, {_applied(result)}.", result, back="/console")

    @action("operator")
    async def activate(self, request: Request, session: Session, form) -> Outcome:
        model = request.path_params["model"]
        version = field(form, "version", required=True, max_length=200, what="the version")
        reason = field(form, "reason", required=True, what="a reason")
        result = await self.switcher.activate(model, version, actor=session.caller, reason=reason)
        return Outcome(f"{model}: {result['from']} → {result['to']} is active after "
                       f"{', '.join(c['check'] for c in result['checks'])} passed; {_applied(result)}.", result,
                       back="/console")

    @action("operator")
    async def rollback(self, request: Request, session: Session, form) -> Outcome:
        model = request.path_params["model"]
        to = field(form, "to", max_length=200) or None
        reason = field(form, "reason", required=True, what="a reason")
        result = await self.switcher.rollback(model, to=to, actor=session.caller, reason=reason)
        return Outcome(f"{model} rolled back: {result['from']} → {result['to']}; {_applied(result)}.", result,
                       back="/console")

    @action("operator")
    async def acknowledge(self, request: Request, session: Session, form) -> Outcome:
        note = field(form, "note", max_length=4000, what="the note") or None
        incident = await self.incidents.acknowledge(request.path_params["id"], actor=session.caller, note=note)
        return Outcome(f"Acknowledged {incident.id}.", incident.to_doc(), back="/console")

    @action("operator")
    async def add_note(self, request: Request, session: Session, form) -> Outcome:
        note = field(form, "note", required=True, max_length=4000, what="the note")
        incident = await self.incidents.note(request.path_params["id"], actor=session.caller, text=note)
        return Outcome(f"Note added to {incident.id}.", incident.to_doc(), back="/console")

    @action("operator")
    async def assign_role(self, request: Request, session: Session, form) -> Outcome:
        role = field(form, "role", required=True, max_length=64, what="the role")
        who = field(form, "who", required=True, max_length=200, what="who takes the role")
        incident = await self.incidents.assign(request.path_params["id"], role=role, who=who, actor=session.caller)
        return Outcome(f"{incident.id}: {role.replace('_', ' ')} is {who}.", incident.to_doc(), back="/console")

    @action("operator")
    async def resolve(self, request: Request, session: Session, form) -> Outcome:
        note = field(form, "note", required=True, max_length=4000, what="a resolution note (what was found and done)")
        incident = await self.incidents.resolve(request.path_params["id"], actor=session.caller, note=note)
        return Outcome(f"Resolved {incident.id}.", incident.to_doc(), back="/console")
