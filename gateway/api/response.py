"""`/admin/incidents/{id}/...` beyond the incident itself: verification, roles, retro-reviews, the affected report.

Operators act; auditors read. Thin over `gateway.incidents.verification`, `.retro`,
`.affected` and the manager's role assignment.
"""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.errors import BadRequest
from gateway.incidents.affected import AffectedReport, as_csv
from gateway.incidents.manager import IncidentManager
from gateway.incidents.retro import RetroReviews
from gateway.incidents.verification import Verification
from gateway.proxy.stages import Callers


class RoleIn(ControlBody):
    role: str = Field(min_length=1, max_length=64)
    who: str = Field(min_length=1, max_length=200)


class RetroIn(ControlBody):
    reason: str = Field(min_length=1, max_length=2000)
    group: str | None = Field(None, max_length=200)
    outcome: str | None = Field(None, max_length=200)


class IncidentResponseApi:
    def __init__(self, callers: Callers, incidents: IncidentManager, verification: Verification, retro: RetroReviews,
                 affected: AffectedReport, *, max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.incidents = incidents
        self.verification = verification
        self.retro = retro
        self.affected = affected
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/admin/incidents/{id}/verify", self.verify, methods=["POST"]),
            Route("/admin/incidents/{id}/roles", self.assign, methods=["POST"]),
            Route("/admin/incidents/{id}/retro-reviews", self.start_retro, methods=["POST"]),
            Route("/admin/incidents/{id}/retro-reviews", self.list_retro, methods=["GET"]),
            Route("/admin/incidents/{id}/affected", self.affected_report, methods=["GET"]),
        ]

    async def verify(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        incident = await self.incidents.get(request.path_params["id"])
        if incident.model is None:
            raise BadRequest(f"incident {incident.id} names no model: there is nothing to test")
        return ok(await self.verification.run(incident.id, actor=who.id))

    async def assign(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, RoleIn, limit=self.max_body_bytes)
        incident = await self.incidents.assign(request.path_params["id"], role=body.role, who=body.who, actor=who.id)
        return ok(incident.to_doc())

    async def start_retro(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, RetroIn, limit=self.max_body_bytes)
        result = await self.retro.start(request.path_params["id"], group=body.group, outcome=body.outcome, actor=who.id,
                                        reason=body.reason)
        return ok(result, status=201)

    async def list_retro(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        incident = await self.incidents.get(request.path_params["id"])
        return ok({"incident": incident.id, "retro_reviews": await self.retro.of_incident(incident.id)})

    async def affected_report(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadRequest("format must be json or csv")
        report = await self.affected.build(request.path_params["id"])
        if fmt == "csv":
            return Response(as_csv(report), media_type="text/csv; charset=utf-8", headers={
                "content-disposition": f'attachment; filename="affected-{report["incident"]}.csv"'})
        return ok(report)
