"""The OpenAI error shape: `{"error": {"message", "type", "param", "code", ...}}`, for every `/v1` error.

OpenAI SDKs pick an exception class by HTTP status and show `type`, `code` and `param`
from the body, so a gateway error reads like the ones a developer already handles: an
unknown model is `model_not_found`, a bad token `invalid_api_key`. The oversight outcomes
have types of their own (`human_review_*`). The request id and any detail (the ticket and
where its decision will appear) travel inside the error object, as in the gateway's own shape.
"""

from __future__ import annotations

import json
from typing import Any

# gateway error type -> (OpenAI type, code); a type not listed maps by status.
_MAPPED: dict[str, tuple[str, str]] = {
    "bad_request": ("invalid_request_error", "invalid_request"),
    "unauthorized": ("invalid_request_error", "invalid_api_key"),
    "forbidden": ("invalid_request_error", "insufficient_permissions"),
    "not_found": ("invalid_request_error", "not_found"),
    "method_not_allowed": ("invalid_request_error", "method_not_allowed"),
    "conflict": ("invalid_request_error", "conflict"),
    "idempotency_key_reused": ("invalid_request_error", "idempotency_key_reused"),
    "payload_too_large": ("invalid_request_error", "request_too_large"),
    "decision_pending": ("human_review_pending", "decision_pending"),
    "rejected": ("human_review_rejected", "rejected_by_reviewer"),
    "expired": ("human_review_expired", "review_expired"),
    "upstream_unreachable": ("server_error", "upstream_unreachable"),
    "upstream_timeout": ("server_error", "upstream_timeout"),
    "store_unavailable": ("server_error", "store_unavailable"),
    "evidence_unavailable": ("server_error", "evidence_unavailable"),
    "model_integrity": ("server_error", "model_integrity"),
    "unavailable": ("server_error", "model_unavailable"),
    "internal": ("server_error", "internal_error"),
}

NOT_RETRIED = frozenset({"model_integrity", "evidence_unavailable"})
"""Gateway errors a retry cannot cure: answered with `x-should-retry: false`, which the OpenAI SDKs obey."""


def openai_error(status: int, type: str, message: str, *, request_id: str | None, param: str | None = None,
                 code: str | None = None, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error object an OpenAI client raises from; `code` refines the type's default code."""
    kind, default = _MAPPED.get(type) or (("server_error", type) if status >= 500 else ("invalid_request_error", type))
    code = code or default
    error: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code, "request_id": request_id}
    for key, value in (detail or {}).items():
        error.setdefault(key, value)
    return {"error": error}


def openai_error_body(status: int, type: str, message: str, *, request_id: str | None, param: str | None = None,
                      code: str | None = None, detail: dict[str, Any] | None = None) -> bytes:
    doc = openai_error(status, type, message, request_id=request_id, param=param, code=code, detail=detail)
    return json.dumps(doc, separators=(",", ":")).encode()
