"""Resolving the model and version: which upstream a request goes to, and at which level.

`/models/{name}/...` names the model in the path; `/v1/...` in the body's `model` field
(JSON, or a multipart form field for file uploads). The active version and the effective level come from the control state's mirror
(memory only); where the version lives comes from the catalog.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from gateway.catalog import Catalog, VersionRoute
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.proxy.forms import FormError, boundary_of, form_fields


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


_SMUGGLED = re.compile(rb"%(2[eEfF]|5[cC])|\\")  # an encoded ".", "/" or "\\", or a raw backslash


def forwarded_path(raw: bytes) -> bytes:
    """The part of a path sent below a version's base URL, if it cannot climb out of it.

    Checked on the raw bytes the client sent, which are also the bytes forwarded: no
    "." or ".." segment, no encoded "/", "." or "\\" (an upstream may decode them), no
    backslash. The query travels separately and is not checked here.
    """
    if _SMUGGLED.search(raw) or any(segment in (b".", b"..") for segment in raw.split(b"/")):
        raise BadRequest("the path may not hold '.' or '..' segments, a backslash, or an encoded '/', '.' or '\\'",
                         param="path")
    return raw or b"/"


def split_model_path(raw_path: bytes, known) -> tuple[str, bytes]:
    """`/models/{name}/{rest}` -> (name, raw rest); a name may hold "/" (Hugging Face names): the longest known wins."""
    segments = raw_path[len(b"/models/"):].split(b"/")
    for count in range(len(segments), 0, -1):
        name = unquote("/".join(s.decode("latin-1") for s in segments[:count]))
        if name in known:
            rest = b"/".join(segments[count:])
            return name, forwarded_path(b"/" + rest if rest or count < len(segments) else b"")
    return unquote(segments[0].decode("latin-1")), b""


@dataclass(frozen=True, slots=True)
class V1Request:
    """What the data plane reads of a `/v1` body (parsed once, here).

    `doc` is the parsed JSON body; `model_at` where a multipart body's `model` value lies
    (both kept so a served name can replace the public one without parsing again).
    """

    model: str
    stream: bool
    doc: dict | None = None
    model_at: tuple[int, int] | None = None


def read_v1(body: bytes, content_type: bytes | None = None) -> V1Request:
    """The `model` a `/v1` request names (JSON body, or a multipart form field), and whether it asks for a stream."""
    if not body:
        raise BadRequest("a /v1 request needs a JSON body with a `model` field", param="model")
    try:
        boundary = boundary_of(content_type) if content_type else None
        if boundary is not None:
            fields = form_fields(body, boundary, _FORM_FIELDS)
            model = fields.get("model")
            if model is None or not model.value:
                raise BadRequest("the multipart form has no `model` field; /v1 routes are routed by it", param="model")
            stream = fields.get("stream")
            return V1Request(model.value, stream is not None and stream.value.strip().lower() == "true",
                             model_at=(model.start, model.end))
    except FormError as exc:
        raise BadRequest(str(exc)) from None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON; /v1 routes are routed by the body's `model` field "
                         "(or a multipart/form-data `model` field)") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str) or not model:
        raise BadRequest("the JSON body has no `model` string; /v1 routes are routed by it", param="model")
    return V1Request(model, doc.get("stream") is True, doc=doc)


_FORM_FIELDS = frozenset({"model", "stream"})
