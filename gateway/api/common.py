"""What every control-plane handler shares: auth, JSON in (`gateway.api.bodies`) and out, the error shape.

Errors are mapped once (`gateway.failures`): `on_error` is the control app's one
exception handler, so an outage or a refusal reads the same here as on the data plane.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.bodies import parse_json, read_capped, validate_body
from gateway.auth import Caller
from gateway.errors import BadRequest, error_body
from gateway.failures import INTERNAL, failure_of
from gateway.openai.errors import openai_error_body
from gateway.proxy.exchange import request_id_from
from gateway.proxy.stages import Callers

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("gateway.api")


def request_id(request: Request) -> str:
    rid = request.scope.get("gateway.request_id")
    if rid is None:
        rid = request.scope["gateway.request_id"] = request_id_from(request.scope["headers"]).decode()
    return rid


def caller(request: Request, callers: Callers, *roles: str) -> Caller:
    """Authenticate the request's bearer token and check its role."""
    found = callers.authorize(request.headers.get("authorization"), *roles)
    request.scope["gateway.caller"] = found.id
    return found


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=headers)


async def body_as(request: Request, model: type[M], *, limit: int) -> M:
    """The request's JSON body (at most `limit` bytes) validated as `model`, or a 4xx naming each problem."""
    body = await optional_body_as(request, model, limit=limit)
    if body is None:
        raise BadRequest("expected a JSON body")
    return body


async def optional_body_as(request: Request, model: type[M], *, limit: int) -> M | None:
    """Like `body_as`, for routes whose body may be left out: None when it is empty."""
    raw = await read_capped(request, limit)
    return validate_body(parse_json(raw), model) if raw.strip() else None


def error_response(request: Request, status: int, type: str, message: str, detail: dict | None = None, *,
                   param: str | None = None, code: str | None = None) -> Response:
    """The JSON error shape: the OpenAI one on `/v1` routes (decisions, models, feedback), the gateway's own elsewhere."""
    rid = request_id(request)
    headers = {"x-request-id": rid}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="gateway"'
    if request.url.path.startswith("/v1/"):
        body = openai_error_body(status, type, message, request_id=rid, param=param, code=code, detail=detail)
    else:
        body = error_body(type, message, rid, detail)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def on_error(request: Request, exc: Exception) -> Response:
    """The control app's one exception handler."""
    if isinstance(exc, HTTPException):  # Starlette's own: no route, wrong method
        message = exc.detail if exc.status_code != 404 else f"no such endpoint: {request.method} {request.url.path}"
        return error_response(request, exc.status_code, _HTTP_TYPES.get(exc.status_code, "error"), str(message))
    failure = failure_of(exc)
    if failure is None:
        log.exception("unexpected error", extra={"request_id": request_id(request)})
        failure = INTERNAL
    return error_response(request, failure.status, failure.type, failure.message, failure.detail,
                          param=failure.param, code=failure.code)
