"""The one error shape every HTTP answer uses: {"error": {"type", "message", "request_id"}}."""

from __future__ import annotations

import json


class GatewayError(Exception):
    """An expected failure that becomes a JSON error answer with `status`."""

    status = 500
    type = "internal"

    param: str | None = None  # the request field at fault, where there is one (OpenAI clients show it)
    code: str | None = None  # a finer code than `type`, for OpenAI clients (e.g. model_not_found)

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None, detail: dict | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code
        self.detail = detail


class BadRequest(GatewayError):
    status, type = 400, "bad_request"


class Unauthorized(GatewayError):
    status, type = 401, "unauthorized"


class Forbidden(GatewayError):
    status, type = 403, "forbidden"


class NotFound(GatewayError):
    status, type = 404, "not_found"


class Conflict(GatewayError):
    status, type = 409, "conflict"


class PayloadTooLarge(GatewayError):
    status, type = 413, "payload_too_large"


class UpstreamUnreachable(GatewayError):
    status, type = 502, "upstream_unreachable"


class UpstreamTimeout(GatewayError):
    status, type = 504, "upstream_timeout"


def error_body(type: str, message: str, request_id: str | None, detail: dict | None = None) -> bytes:
    error = {"type": type, "message": message, "request_id": request_id}
    if detail:
        error.update(detail)
    return json.dumps({"error": error}, separators=(",", ":")).encode()
