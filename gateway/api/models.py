"""`/admin/models`: each model's versions, which is active, and their verification (operator, auditor)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import caller, ok
from gateway.errors import NotFound


def describe_models(gw) -> dict:
    out = {}
    for name, route in gw.catalog.models.items():
        active = gw.state.active.get(name)
        out[name] = {
            "active": active,
            "level": gw.state.level_for(name),
            "versions": {
                version: {"upstream": vr.upstream, "active": version == active, **gw.integrity.describe(name, version)}
                for version, vr in route.versions.items()
            },
        }
    return out


async def list_models(request: Request) -> Response:
    caller(request, "operator", "auditor")
    return ok({"models": describe_models(request.app.state.gateway)})


async def verify_version(request: Request) -> Response:
    who = caller(request, "operator")
    gw = request.app.state.gateway
    model, version = request.path_params["model"], request.path_params["version"]
    if (model, version) not in gw.integrity.versions:
        raise NotFound(f"unknown model version {model}/{version}")
    result = await gw.integrity.verify(model, version, actor=who.id, reason="verification on demand")
    return ok({"model": model, "version": version, **result})


def routes() -> list[Route]:
    return [
        Route("/admin/models", list_models, methods=["GET"]),
        Route("/admin/models/{model}/versions/{version}/verify", verify_version, methods=["POST"]),
    ]
