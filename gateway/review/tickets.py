"""Ticket documents: what a reviewer sees and what a decision turns into for the client.

A ticket is stored whole (request, the model's recommendation, confidence, why it was
held) so a reviewer on any replica, or after a restart, has everything to decide.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.ids import random_hex

Kind = Literal["hold", "human", "sample"]

PENDING, DECIDED, EXPIRED = "pending", "decided", "expired"


def new_ticket_id() -> str:
    return "tk_" + random_hex(10)


def pack_body(body: bytes) -> dict[str, str]:
    """Bodies as text when they are text (readable in the console), else base64."""
    try:
        return {"body": body.decode("utf-8"), "body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}


def unpack_body(part: dict[str, Any]) -> bytes:
    if part.get("body_encoding") == "base64":
        return base64.b64decode(part["body"])
    return str(part.get("body", "")).encode("utf-8")


def capture_headers(headers: list[tuple[bytes, bytes]], redact: tuple[str, ...]) -> list[list[str]]:
    """Headers as text pairs, with secrets replaced: tokens never reach a ticket or a record."""
    redacted = {name.encode() for name in redact}
    return [[k.decode("latin-1"), "[redacted]" if k in redacted else v.decode("latin-1")] for k, v in headers]


def make_ticket(
    *,
    kind: Kind,
    request_id: str,
    caller: str,
    model: str,
    version: str,
    level: int,
    reason: str,
    request: dict[str, Any],
    recommendation: dict[str, Any] | None,
    confidence: float | None,
    timeout: float | None,
    policy_version: str,
) -> dict[str, Any]:
    now = time.time()
    return {
        "id": new_ticket_id(),
        "kind": kind,
        "status": PENDING,
        "request_id": request_id,
        "caller": caller,
        "model": model,
        "version": version,
        "level": level,
        "reason": reason,
        "created_at": now,
        "expires_at": now + timeout if timeout is not None else None,
        "request": request,
        "recommendation": recommendation,
        "confidence": confidence,
        "claimed_by": None,
        "claim_until": None,
        "decision": None,
        "policy_version": policy_version,
    }


class DecisionIn(BaseModel):
    """A reviewer's decision: `action` on held and human tickets, `verdict` on samples."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["approve", "override", "reject"] | None = None
    verdict: Literal["agree", "disagree"] | None = None
    note: str = Field("", max_length=4000)
    response: Any = Field(None, description="override only: the answer the client receives (JSON)")
    status: int = Field(200, ge=200, le=599, description="override only: the HTTP status of that answer")

    @model_validator(mode="after")
    def _shape(self) -> "DecisionIn":
        if (self.action is None) == (self.verdict is None):
            raise ValueError("give `action` (approve, override, reject) or, for a sampled ticket, `verdict` (agree, disagree)")
        if self.action == "override" and self.response is None:
            raise ValueError("an override needs `response`, the answer the client receives")
        if self.action != "override" and self.response is not None:
            raise ValueError("`response` goes only with action override")
        return self


def final_answer(ticket: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What the client receives once a held or human ticket is closed."""
    decision = ticket.get("decision") or {}
    action = decision.get("action")
    recommendation = ticket.get("recommendation")
    decided = [
        (b"x-decision", str(action).encode()),
        (b"x-decided-by", str(decision.get("by", "")).encode("latin-1", "replace")),
        (b"x-ticket", ticket["id"].encode()),
    ]
    if action in ("approve", "release") and recommendation is not None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in recommendation.get("headers", [])
                   if k.lower() not in ("content-length",)]
        return recommendation["status"], headers + decided, unpack_body(recommendation)
    if action == "override":
        body = json.dumps(decision.get("response")).encode()
        return decision.get("status", 200), [(b"content-type", b"application/json")] + decided, body
    kind = "expired" if ticket["status"] == EXPIRED else "rejected"
    note = decision.get("note") or ""
    message = (
        f"no reviewer decided within the review timeout; closed as {action} (policy on_expiry)"
        if kind == "expired"
        else f"a reviewer rejected this request{': ' + note if note else ''}"
    )
    error = {"error": {"type": kind, "message": message, "request_id": ticket["request_id"], "ticket": ticket["id"]}}
    return 403, [(b"content-type", b"application/json")] + decided, json.dumps(error).encode()


def public_view(ticket: dict[str, Any]) -> dict[str, Any]:
    """A ticket as the review API shows it."""
    view = dict(ticket)
    now = time.time()
    view["age_seconds"] = round(now - ticket["created_at"], 3)
    if ticket.get("claim_until") and ticket["claim_until"] < now:
        view["claimed_by"], view["claim_until"] = None, None
    return view
