"""`/admin/tokens`: issue, list, expire and revoke bearer tokens at run time (operator; auditors list)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.credentials import Credentials
from gateway.proxy.stages import Callers


class IssueIn(ControlBody):
    id: str = Field(min_length=1, max_length=64)
    roles: list[str] = Field(min_length=1, max_length=4)
    ttl: float | int | None = Field(None, description="seconds until it expires (default: never)")
    reason: str = Field(min_length=1, max_length=2000)


class RevokeIn(ControlBody):
    reason: str = Field(min_length=1, max_length=2000)


class ExpireIn(ControlBody):
    reason: str = Field(min_length=1, max_length=2000)
    at: float | int | None = Field(None, description="unix time it stops working (default: now)")


class TokensApi:
    def __init__(self, callers: Callers, credentials: Credentials, *, max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.credentials = credentials
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/admin/tokens", self.list_tokens, methods=["GET"]),
            Route("/admin/tokens", self.issue, methods=["POST"]),
            Route("/admin/tokens/{id}/revoke", self.revoke, methods=["POST"]),
            Route("/admin/tokens/{id}/expire", self.expire, methods=["POST"]),
        ]

    async def list_tokens(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        return ok({"tokens": self.credentials.list()})

    async def issue(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, IssueIn, limit=self.max_body_bytes)
        ttl = float(body.ttl) if body.ttl is not None else None
        result = await self.credentials.issue(body.id, body.roles, ttl=ttl, actor=who.id, reason=body.reason)
        return ok(result, status=201, headers={"cache-control": "no-store"})

    async def revoke(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, RevokeIn, limit=self.max_body_bytes)
        return ok(await self.credentials.revoke(request.path_params["id"], actor=who.id, reason=body.reason))

    async def expire(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, ExpireIn, limit=self.max_body_bytes)
        at = float(body.at) if body.at is not None else None
        return ok(await self.credentials.expire(request.path_params["id"], at=at, actor=who.id, reason=body.reason))
