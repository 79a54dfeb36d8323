"""`/admin/models`: each model's versions, which is active, and their verification (operator, auditor)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import caller, ok
from gateway.catalog import Catalog
from gateway.control.state import ControlState
from gateway.errors import NotFound
from gateway.integrity.gate import IntegrityGate
from gateway.proxy.stages import Callers


class ModelsApi:
    def __init__(self, callers: Callers, state: ControlState, catalog: Catalog, integrity: IntegrityGate) -> None:
        self.callers = callers
        self.state = state
        self.catalog = catalog
        self.integrity = integrity

    def routes(self) -> list[Route]:
        return [
            Route("/admin/models", self.list_models, methods=["GET"]),
            Route("/admin/models/{model:path}/versions/{version}/verify", self.verify_version, methods=["POST"]),
        ]

    def describe(self) -> dict[str, Any]:
        out = {}
        for name, route in self.catalog.models.items():
            active = self.state.active.get(name)
            out[name] = {
                "active": active,
                "level": self.state.level_for(name),
                "versions": {version: {"upstream": vr.upstream, "active": version == active,
                                       "endpoints": [{"url": e.url, "up": e.up, "outstanding": e.outstanding,
                                                      "requests": e.requests, "ejections": e.ejections}
                                                     for e in vr.pool.endpoints],
                                       **self.integrity.describe(name, version)}
                             for version, vr in route.versions.items()},
            }
        return out

    async def list_models(self, request: Request) -> Response:
        caller(request, self.callers, "operator", "auditor")
        return ok({"models": self.describe()})

    async def verify_version(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        model, version = request.path_params["model"], request.path_params["version"]
        if (model, version) not in self.integrity.versions:
            raise NotFound(f"unknown model version {model}/{version}")
        result = await self.integrity.verify(model, version, actor=who.id, reason="verification on demand")
        return ok({"model": model, "version": version, **result})
