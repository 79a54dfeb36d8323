"""`/admin/oversight` and `/admin/kill`: levels, the kill switch, two-person lowering (operator)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import body_as, caller, ok


class LevelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = Field(ge=0, le=4)
    reason: str = Field(min_length=1, max_length=2000)


class KillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)
    model: str | None = None


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=2000)


async def describe(request: Request) -> Response:
    caller(request, "operator", "auditor")
    return ok(await request.app.state.gateway.levels.describe())


async def set_global(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, LevelIn)
    result = await request.app.state.gateway.levels.set_level(body.level, model=None, actor=who.id, reason=body.reason)
    return ok(result, status=202 if result["status"] == "pending_approval" else 200)


async def set_model(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, LevelIn)
    model = request.path_params["name"]
    result = await request.app.state.gateway.levels.set_level(body.level, model=model, actor=who.id, reason=body.reason)
    return ok(result, status=202 if result["status"] == "pending_approval" else 200)


async def kill(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, KillIn)
    return ok(await request.app.state.gateway.levels.kill(model=body.model, actor=who.id, reason=body.reason))


async def approve(request: Request) -> Response:
    who = caller(request, "operator")
    raw = await request.body()
    reason = (await body_as(request, ApproveIn)).reason if raw.strip() else None
    return ok(await request.app.state.gateway.levels.approve(request.path_params["id"], actor=who.id, reason=reason))


def routes() -> list[Route]:
    return [
        Route("/admin/oversight", describe, methods=["GET"]),
        Route("/admin/oversight/global", set_global, methods=["PUT"]),
        Route("/admin/oversight/models/{name}", set_model, methods=["PUT"]),
        Route("/admin/oversight/changes/{id}/approve", approve, methods=["POST"]),
        Route("/admin/kill", kill, methods=["POST"]),
    ]
