"""`/admin/models/{m}/versions`, `/activate`, `/rollback`: the version registry and switches (operator)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.proxy.stages import Callers
from gateway.versions.registry import Registry
from gateway.versions.switch import Switcher

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class NewVersion(ControlBody):
    version: str = Field(pattern=_NAME)
    reason: str = Field(min_length=1, max_length=2000)
    spec: dict[str, Any] = Field(description="as a version in the config: upstream, artifact, signature, trust, tls, headers")


class Activate(ControlBody):
    version: str = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=2000)


class Rollback(ControlBody):
    to: str | None = None
    reason: str = Field(min_length=1, max_length=2000)


class VersionsApi:
    def __init__(self, callers: Callers, registry: Registry, switcher: Switcher, *,
                 max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.registry = registry
        self.switcher = switcher
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/admin/models/{model:path}/versions", self.list_versions, methods=["GET"]),
            Route("/admin/models/{model:path}/versions", self.add_version, methods=["POST"]),
            Route("/admin/models/{model:path}/activate", self.activate, methods=["POST"]),
            Route("/admin/models/{model:path}/rollback", self.rollback, methods=["POST"]),
        ]

    async def list_versions(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        model = request.path_params["model"]
        versions = self.registry.versions(model)
        return ok({"model": model, "active": self.registry.active(model), "versions": versions,
                   "history": await self.switcher.history(model)})

    async def add_version(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, NewVersion, limit=self.max_body_bytes)
        result = await self.registry.add(request.path_params["model"], body.version, body.spec, actor=who.id, reason=body.reason)
        return ok(result, status=201)

    async def activate(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, Activate, limit=self.max_body_bytes)
        return ok(await self.switcher.activate(request.path_params["model"], body.version, actor=who.id, reason=body.reason))

    async def rollback(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, Rollback, limit=self.max_body_bytes)
        return ok(await self.switcher.rollback(request.path_params["model"], to=body.to, actor=who.id, reason=body.reason))
