"""`/admin/incidents` (operator; auditors read) and `POST /v1/feedback` (the client that asked)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok, optional_body_as
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.errors import BadRequest
from gateway.incidents.manager import IncidentManager
from gateway.incidents.monitor import Monitor
from gateway.proxy.stages import Callers

_STATUSES = ("open", "acknowledged", "resolved")


class NewIncident(ControlBody):
    category: str
    severity: str
    summary: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    raise_to: int | None = Field(None, ge=0, le=4)
    revoke_token: str | None = Field(None, min_length=1, max_length=64, description="a token id to revoke at once")


class Note(ControlBody):
    note: str = Field("", max_length=4000)


class Feedback(ControlBody):
    request_id: str = Field(min_length=1, max_length=128)
    correct: bool | None = None
    label: Any = None

    @model_validator(mode="after")
    def _one(self) -> "Feedback":
        if (self.correct is None) == (self.label is None):
            raise ValueError("give `correct` (true or false) or `label` (the true answer)")
        return self


class IncidentsApi:
    def __init__(self, callers: Callers, incidents: IncidentManager, monitor: Monitor, *,
                 max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.incidents = incidents
        self.monitor = monitor
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/admin/incidents", self.list_incidents, methods=["GET"]),
            Route("/admin/incidents", self.open_incident, methods=["POST"]),
            Route("/admin/incidents/{id}", self.show, methods=["GET"]),
            Route("/admin/incidents/{id}/ack", self.acknowledge, methods=["POST"]),
            Route("/admin/incidents/{id}/notes", self.add_note, methods=["POST"]),
            Route("/admin/incidents/{id}/resolve", self.resolve, methods=["POST"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
        ]

    async def list_incidents(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        status = request.query_params.get("status")
        if status is not None and status not in _STATUSES:
            raise BadRequest(f"status must be one of {', '.join(_STATUSES)}")
        return ok({"incidents": [i.to_doc() for i in await self.incidents.list(status)]})

    async def show(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        return ok((await self.incidents.get(request.path_params["id"])).to_doc())

    async def open_incident(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, NewIncident, limit=self.max_body_bytes)
        incident = await self.incidents.open_by_hand(category=body.category, severity=body.severity, model=body.model,
                                                     summary=body.summary, actor=who.id, raise_to=body.raise_to,
                                                     revoke_token=body.revoke_token)
        return ok(incident.to_doc(), status=201)

    async def acknowledge(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await optional_body_as(request, Note, limit=self.max_body_bytes)
        note = body.note if body is not None else None
        return ok((await self.incidents.acknowledge(request.path_params["id"], actor=who.id, note=note)).to_doc())

    async def add_note(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, Note, limit=self.max_body_bytes)
        return ok((await self.incidents.note(request.path_params["id"], actor=who.id, text=body.note)).to_doc())

    async def resolve(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, Note, limit=self.max_body_bytes)
        return ok((await self.incidents.resolve(request.path_params["id"], actor=who.id, note=body.note)).to_doc())

    async def feedback(self, request: Request) -> Response:
        who = caller(request, self.callers, "client")
        body = await body_as(request, Feedback, limit=self.max_body_bytes)
        result = await self.monitor.feedback(body.request_id, who.id, correct=body.correct, label=body.label)
        return ok(result, status=201)
