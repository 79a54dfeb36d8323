"""Health, readiness, metrics and the OpenAI model list."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import caller, ok
from gateway.catalog import Catalog
from gateway.control.state import ControlState
from gateway.errors import NotFound
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.proxy.stages import Callers


class OpsApi:
    def __init__(self, callers: Callers, state: ControlState, catalog: Catalog, metrics: Metrics, *,
                 metrics_public: bool, started_at: Callable[[], float]) -> None:
        self.callers = callers
        self.state = state
        self.catalog = catalog
        self.metrics = metrics
        self.metrics_public = metrics_public
        self.started_at = started_at

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.render_metrics),
            Route("/v1/models", self.list_models),
            Route("/v1/models/{model:path}", self.get_model),
        ]

    async def healthz(self, request: Request) -> Response:
        return ok({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = {
            "store": "stale" if self.state.is_stale() else "ok",
            "models": {name: ("ok" if self.state.active.get(name) in route.versions else "no active version")
                       for name, route in self.catalog.models.items()},
        }
        ready = checks["store"] == "ok" and all(v == "ok" for v in checks["models"].values())
        return ok({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)

    async def render_metrics(self, request: Request) -> Response:
        if not self.metrics_public:
            caller(request, self.callers, "operator", "auditor")
        for name in self.catalog.models:
            self.metrics.level.labels(name).set(self.state.level_for(name))
        await self.metrics.refresh()  # the queue's and incidents' figures: one cached store read each
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def list_models(self, request: Request) -> Response:
        """`GET /v1/models`, as OpenAI clients expect it: the models this gateway serves, with their oversight."""
        caller(request, self.callers, "client")
        return ok({"object": "list", "data": [self._card(name) for name in sorted(self.catalog.models)]})

    async def get_model(self, request: Request) -> Response:
        """`GET /v1/models/{id}` (the id may hold "/", as Hugging Face names do)."""
        caller(request, self.callers, "client")
        name = request.path_params["model"]
        if name not in self.catalog.models:
            raise NotFound(f"unknown model {name!r}; GET /v1/models lists the models this gateway serves",
                           param="model", code="model_not_found")
        return ok(self._card(name))

    def _card(self, name: str) -> dict:
        """The OpenAI model object, and what oversight the model is under right now on this replica."""
        return {"id": name, "object": "model", "created": int(self.started_at() or time.time()),
                "owned_by": "oversight-gateway", "oversight_level": self.state.level_for(name),
                "active_version": self.state.active.get(name)}
