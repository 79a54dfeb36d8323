"""Health, readiness, metrics and the OpenAI model list."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import caller, ok
from gateway.metrics import CONTENT_TYPE


async def healthz(request: Request) -> Response:
    return ok({"status": "ok"})


async def readyz(request: Request) -> Response:
    gw = request.app.state.gateway
    checks = {
        "store": "stale" if gw.state.is_stale() else "ok",
        "models": {name: ("ok" if gw.state.active.get(name) in route.versions else "no active version")
                   for name, route in gw.catalog.models.items()},
    }
    ready = checks["store"] == "ok" and all(v == "ok" for v in checks["models"].values())
    return ok({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)


async def metrics(request: Request) -> Response:
    gw = request.app.state.gateway
    if not gw.config.metrics.public:
        caller(request, "operator", "auditor")
    for name in gw.catalog.models:
        gw.metrics.level.labels(name).set(gw.state.level_for(name))
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE)


async def list_models(request: Request) -> Response:
    """`GET /v1/models`, as OpenAI clients expect it: the models this gateway serves."""
    gw = request.app.state.gateway
    caller(request, "client")
    created = int(gw.started_at or time.time())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "oversight-gateway"} for name in sorted(gw.catalog.models)]
    return ok({"object": "list", "data": data})


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/v1/models", list_models),
    ]
