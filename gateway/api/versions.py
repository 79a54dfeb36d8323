"""`/admin/models/{m}/versions`, `/activate`, `/rollback`: the version registry and switches (operator)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import body_as, caller, ok

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class NewVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=_NAME)
    reason: str = Field(min_length=1, max_length=2000)
    spec: dict[str, Any] = Field(description="as a version in the config: upstream, artifact, signature, trust, tls, headers")


class Activate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=2000)


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str | None = None
    reason: str = Field(min_length=1, max_length=2000)


async def list_versions(request: Request) -> Response:
    caller(request, "operator", "auditor")
    gw = request.app.state.gateway
    model = request.path_params["model"]
    versions = gw.registry.versions(model)
    return ok({"model": model, "active": gw.state.active.get(model), "versions": versions,
               "history": await gw.switcher.history(model)})


async def add_version(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, NewVersion)
    result = await request.app.state.gateway.registry.add(request.path_params["model"], body.version, body.spec,
                                                           actor=who.id, reason=body.reason)
    return ok(result, status=201)


async def activate(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, Activate)
    return ok(await request.app.state.gateway.switcher.activate(request.path_params["model"], body.version,
                                                                actor=who.id, reason=body.reason))


async def rollback(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, Rollback)
    return ok(await request.app.state.gateway.switcher.rollback(request.path_params["model"], to=body.to,
                                                                actor=who.id, reason=body.reason))


def routes() -> list[Route]:
    return [
        Route("/admin/models/{model}/versions", list_versions, methods=["GET"]),
        Route("/admin/models/{model}/versions", add_version, methods=["POST"]),
        Route("/admin/models/{model}/activate", activate, methods=["POST"]),
        Route("/admin/models/{model}/rollback", rollback, methods=["POST"]),
    ]
