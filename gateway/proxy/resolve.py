"""Resolving the model and version: which upstream a request goes to, and at which level.

`/models/{name}/...` names the model in the path; `/v1/...` in the JSON body's `model`
field. The active version and the effective level come from the control state's mirror
(memory only); where the version lives comes from the catalog.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from gateway.catalog import Catalog, VersionRoute
from gateway.errors import BadRequest, GatewayError, NotFound


class ServingState(Protocol):
    """What resolution reads of the mirrored control state."""

    active: dict[str, str]

    def level_for(self, model: str) -> int: ...


class Resolver:
    def __init__(self, catalog: Catalog, state: ServingState) -> None:
        self.catalog = catalog
        self.state = state

    def known(self, name: str) -> str:
        """`name` if this gateway serves a model of that name, else 404 naming the ones it does."""
        if name not in self.catalog.models:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(sorted(self.catalog.models))}",
                           param="model", code="model_not_found")
        return name

    def active_route(self, model: str) -> tuple[VersionRoute, int]:
        """The active version's route and the model's effective oversight level."""
        version = self.state.active.get(model)
        route = self.catalog.models[model].versions.get(version) if version else None
        if route is None:
            raise GatewayError(f"model {model!r} has no active version this replica can reach", status=503, type="unavailable")
        return route, self.state.level_for(model)


@dataclass(frozen=True, slots=True)
class V1Request:
    """What the data plane reads of a `/v1` JSON body (parsed once, here)."""

    model: str
    stream: bool


def read_v1(body: bytes) -> V1Request:
    """The `model` a `/v1` request's JSON body names, and whether it asks for a stream."""
    if not body:
        raise BadRequest("a /v1 request needs a JSON body with a `model` field", param="model")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON; /v1 routes are routed by the body's `model` field") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str) or not model:
        raise BadRequest("the JSON body has no `model` string; /v1 routes are routed by it", param="model")
    return V1Request(model, doc.get("stream") is True)

