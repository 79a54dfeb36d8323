"""What a control-plane request body may be: read within a size cap, JSON the gateway can keep, strict types.

Sizes before trust: a body is read from the stream and refused with 413 the moment it
passes the configured cap (`limits.max_control_body_bytes`), whether or not it declared
a Content-Length (chunked bodies do not), and before anything else is done with it.

Client JSON is parsed here and nowhere else on the control plane, and is refused (400)
unless the gateway can store, record and answer it as it is: nested at most
`MAX_JSON_DEPTH` deep (checked without recursion), no NaN or Infinity (not JSON:
json.loads takes them, the store and the JSON answers cannot write them), integers that
fit in 64 bits and floats that stay finite (what orjson, the store's encoder, writes),
strings that are valid Unicode (no lone surrogates). Bodies are then validated in pydantic's
strict mode: `true` is not the level 1, `"3"` is not the number 3.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from gateway.configfile import describe_errors
from gateway.errors import BadRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 64  # well inside orjson's 255, with room for the documents a body is stored in
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson can encode
_INT_DIGITS = 20


class ControlBody(BaseModel):
    """The base of every control-plane body model: unknown fields refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body, read chunk by chunk; 413 as soon as it is larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limit} bytes (limits.max_control_body_bytes)")


class _Refused(ValueError):
    """Raised from json.loads' hooks: a value the gateway will not take."""


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number; send a finite number or null")


def _integer(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _INT_DIGITS or not _INT_RANGE[0] <= (value := int(text)) <= _INT_RANGE[1]:
        raise _Refused(f"the integer {text[:24]}{'...' if len(text) > 24 else ''} does not fit in 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:24]} is too large to be kept as a finite number")
    return value


def parse_json(raw: bytes | str, what: str = "request body") -> Any:
    """`raw` as JSON the gateway can store and record, or a 400 saying what is wrong with it."""
    try:
        data = json.loads(raw, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except _Refused as exc:
        raise BadRequest(f"{what}: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{what}: JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and bytes that are not UTF-8
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    _check_keepable(data, what)
    return data


def _check_keepable(data: Any, what: str) -> None:
    """Depth and strings, walked with an explicit stack (deep input must not exhaust Python's)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, what)
        elif isinstance(value, (dict, list)):
            if depth + 1 > MAX_JSON_DEPTH:
                raise BadRequest(f"{what}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key, what)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what}: a string holds a lone surrogate escape (\\ud800-\\udfff), which is not Unicode text") from None


def validate_body(data: Any, model: type[M]) -> M:
    """`data` as `model`, strictly (models declared outside gateway.api are held to the same rule), or a 400."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise BadRequest("; ".join(describe_errors(exc))) from None
