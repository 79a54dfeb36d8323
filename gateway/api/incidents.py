"""`/admin/incidents` (operator; auditors read) and `POST /v1/feedback` (the client that asked)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import body_as, caller, ok
from gateway.errors import BadRequest

_STATUSES = ("open", "acknowledged", "resolved")


class NewIncident(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str
    severity: str
    summary: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    raise_to: int | None = Field(None, ge=0, le=4)


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=4000)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    correct: bool | None = None
    label: Any = None

    @model_validator(mode="after")
    def _one(self) -> "Feedback":
        if (self.correct is None) == (self.label is None):
            raise ValueError("give `correct` (true or false) or `label` (the true answer)")
        return self


async def list_incidents(request: Request) -> Response:
    caller(request, "operator", "auditor")
    status = request.query_params.get("status")
    if status is not None and status not in _STATUSES:
        raise BadRequest(f"status must be one of {', '.join(_STATUSES)}")
    return ok({"incidents": await request.app.state.gateway.incidents.list(status)})


async def show(request: Request) -> Response:
    caller(request, "operator", "auditor")
    return ok(await request.app.state.gateway.incidents.get(request.path_params["id"]))


async def open_incident(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, NewIncident)
    incident = await request.app.state.gateway.incidents.open_by_hand(
        category=body.category, severity=body.severity, model=body.model, summary=body.summary, actor=who.id,
        raise_to=body.raise_to)
    return ok(incident, status=201)


async def acknowledge(request: Request) -> Response:
    who = caller(request, "operator")
    note = (await body_as(request, Note)).note if (await request.body()).strip() else None
    return ok(await request.app.state.gateway.incidents.acknowledge(request.path_params["id"], actor=who.id, note=note))


async def add_note(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, Note)
    return ok(await request.app.state.gateway.incidents.note(request.path_params["id"], actor=who.id, text=body.note))


async def resolve(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, Note)
    return ok(await request.app.state.gateway.incidents.resolve(request.path_params["id"], actor=who.id, note=body.note))


async def feedback(request: Request) -> Response:
    who = caller(request, "client")
    body = await body_as(request, Feedback)
    result = await request.app.state.gateway.monitor.feedback(body.request_id, who.id, correct=body.correct, label=body.label)
    return ok(result, status=201)


def routes() -> list[Route]:
    return [
        Route("/admin/incidents", list_incidents, methods=["GET"]),
        Route("/admin/incidents", open_incident, methods=["POST"]),
        Route("/admin/incidents/{id}", show, methods=["GET"]),
        Route("/admin/incidents/{id}/ack", acknowledge, methods=["POST"]),
        Route("/admin/incidents/{id}/notes", add_note, methods=["POST"]),
        Route("/admin/incidents/{id}/resolve", resolve, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
    ]
