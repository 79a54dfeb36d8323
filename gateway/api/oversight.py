"""`/admin/oversight` and `/admin/kill`: levels, the kill switch, two-person lowering (operator)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok, optional_body_as
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.oversight.levels import LevelControl
from gateway.proxy.stages import Callers


class LevelIn(ControlBody):
    level: int = Field(ge=0, le=4)
    reason: str = Field(min_length=1, max_length=2000)


class KillIn(ControlBody):
    reason: str = Field(min_length=1, max_length=2000)
    model: str | None = None


class ApproveIn(ControlBody):
    reason: str | None = Field(None, max_length=2000)


class OversightApi:
    def __init__(self, callers: Callers, levels: LevelControl, *,
                 max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.levels = levels
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/admin/oversight", self.describe, methods=["GET"]),
            Route("/admin/oversight/global", self.set_global, methods=["PUT"]),
            Route("/admin/oversight/models/{name:path}", self.set_model, methods=["PUT"]),
            Route("/admin/oversight/changes/{id}/approve", self.approve, methods=["POST"]),
            Route("/admin/kill", self.kill, methods=["POST"]),
        ]

    async def describe(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        return ok(await self.levels.describe())

    async def set_global(self, request: Request) -> Response:
        return await self._set(request, None)

    async def set_model(self, request: Request) -> Response:
        return await self._set(request, request.path_params["name"])

    async def _set(self, request: Request, model: str | None) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, LevelIn, limit=self.max_body_bytes)
        result = await self.levels.set_level(body.level, model=model, actor=who.id, reason=body.reason)
        return ok(result, status=202 if result["status"] == "pending_approval" else 200)

    async def kill(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, KillIn, limit=self.max_body_bytes)
        return ok(await self.levels.kill(model=body.model, actor=who.id, reason=body.reason))

    async def approve(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await optional_body_as(request, ApproveIn, limit=self.max_body_bytes)
        reason = body.reason if body is not None else None
        return ok(await self.levels.approve(request.path_params["id"], actor=who.id, reason=reason))
