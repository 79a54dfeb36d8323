"""`POST /v1/reports` and `GET /v1/reports/{id}`: a client reports (and may appeal) one of its own answers.

On a `/v1` route, so errors have the OpenAI shape (`gateway.api.common.error_response`).
The rules are in `gateway.incidents.reports`; this is only the HTTP around them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.incidents.reports import Reports
from gateway.proxy.stages import Callers


class ReportIn(ControlBody):
    request_id: str = Field(min_length=1, max_length=128)
    category: Literal["discrimination", "harmful", "false", "other"]
    text: str = Field("", max_length=4000)
    appeal: bool = Field(False, description="ask for the decision to be reviewed again by a human")


class ReportsApi:
    def __init__(self, callers: Callers, reports: Reports, *, max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.reports = reports
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [Route("/v1/reports", self.create, methods=["POST"]),
                Route("/v1/reports/{id}", self.show, methods=["GET"])]

    async def create(self, request: Request) -> Response:
        who = caller(request, self.callers, "client")
        body = await body_as(request, ReportIn, limit=self.max_body_bytes)
        return ok(await self.reports.report(who.id, body.request_id, category=body.category, text=body.text,
                                            appeal=body.appeal), status=201)

    async def show(self, request: Request) -> Response:
        who = caller(request, self.callers, "client")
        return ok(await self.reports.get(who.id, request.path_params["id"]))
