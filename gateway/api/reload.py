"""`POST /admin/reload`: re-read the config and policy on every replica (operator; see `gateway.reload`)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import caller, ok, optional_body_as
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.proxy.stages import Callers
from gateway.reload import Reloader


class ReloadIn(ControlBody):
    reason: str = Field("reload requested", min_length=1, max_length=2000)


class ReloadApi:
    def __init__(self, callers: Callers, reloader: Reloader, *, max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.reloader = reloader
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [Route("/admin/reload", self.reload, methods=["POST"])]

    async def reload(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await optional_body_as(request, ReloadIn, limit=self.max_body_bytes) or ReloadIn()
        return ok(await self.reloader.request(actor=who.id, reason=body.reason))
