"""What a decision record holds: who asked which model version what, what it answered, what became of it.

Secrets never reach a record: the caller appears by token id, and headers the policy
lists (Authorization and Cookie among them) are replaced by "[redacted]". Body fields
can be removed by JSON pointer. Bodies travel separately so the log can encrypt them.
"""

from __future__ import annotations

import json
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

REDACTED = "[redacted]"


def decision_record(
    ex: "Exchange",
    request_headers: list[tuple[bytes, bytes]],
    *,
    policy_version: str,
    root_digest: str | None,
    redact_headers: frozenset[bytes],
    redact_pointers: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, bytes]]:
    now = time.time()
    elapsed = perf_counter() - ex.started
    record: dict[str, Any] = {
        "kind": "decision",
        "time": now - elapsed,
        "end": now,
        "request_id": ex.request_id.decode(),
        "caller": ex.caller.id if ex.caller else None,
        "model": ex.model,
        "version": ex.version,
        "root_digest": root_digest,
        "level": ex.level,
        "route": ex.route,
        "policy": policy_version,
        "status": ex.status or ex.response_status,
        "latency_ms": round(elapsed * 1000, 3),
        "upstream_ms": round(ex.upstream_seconds * 1000, 3),
        "request": {"method": ex.method, "path": ex.target.decode("latin-1"), "headers": headers_for_record(request_headers, redact_headers)},
        "response": {"status": ex.response_status, "headers": headers_for_record(ex.response_headers, redact_headers)},
    }
    if ex.ticket:
        record["ticket"] = ex.ticket
    if ex.confidence is not None:
        record["confidence"] = ex.confidence
    if ex.truncated:
        record["response"]["truncated"] = True
    bodies = {
        "request": redact_body(ex.request_body or b"", redact_pointers),
        "response": redact_body(ex.response_body or b"", redact_pointers),
    }
    return record, bodies


def action_record(kind: str, actor: str, reason: str, details: dict[str, Any]) -> dict[str, Any]:
    """A control action: a level change, a kill, a switch, a review decision, a verification."""
    return {"kind": "action", "action": kind, "time": time.time(), "actor": actor, "reason": reason,
            **{k: v for k, v in details.items() if v is not None}}


def headers_for_record(headers: list[tuple[bytes, bytes]], redact: frozenset[bytes]) -> list[list[str]]:
    return [[k.decode("latin-1"), REDACTED if k in redact else v.decode("latin-1")] for k, v in headers]


def redact_body(body: bytes, pointers: tuple[str, ...]) -> bytes:
    """Replace the fields at `pointers` (RFC 6901) in a JSON body; other bodies pass unchanged."""
    if not pointers or not body:
        return body
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    changed = False
    for pointer in pointers:
        changed |= _redact(doc, pointer)
    return json.dumps(doc, separators=(",", ":")).encode() if changed else body


def _redact(doc: Any, pointer: str) -> bool:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")] if pointer else []
    if not parts:
        return False
    target = doc
    for part in parts[:-1]:
        try:
            target = target[int(part)] if isinstance(target, list) else target[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return False
    last = parts[-1]
    if isinstance(target, dict) and last in target:
        target[last] = REDACTED
        return True
    if isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = REDACTED
        return True
    return False
