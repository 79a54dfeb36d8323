"""Tickets: what a reviewer sees, and what a decision turns into for the client.

A ticket holds everything needed to decide (the request, the model's recommendation,
its confidence, why it was held), so a reviewer on any replica, or after a restart, can
decide it. Tickets are frozen values; `Ticket.to_doc` and `Ticket.from_doc` convert them
at the store boundary, where bodies travel as text (or base64 when they are not text).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.evidence import pack_body, unpack_body
from gateway.ids import ordered_secret
from gateway.policy import Reason

Kind = Literal["hold", "human", "sample", "appeal"]  # appeal: a client asked for a served decision to be reviewed again
Pair = tuple[str, str]

PENDING, DECIDED, EXPIRED = "pending", "decided", "expired"


def new_ticket_id() -> str:
    """`tk_`, the time in milliseconds, 80 random bits: the store's ticket index grows at its right edge."""
    return "tk_" + ordered_secret(10)


def _pairs(headers: Any) -> tuple[Pair, ...]:
    return tuple((str(k), str(v)) for k, v in headers or ())


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """The request as the reviewer sees it (secret headers already redacted)."""

    method: str
    path: str
    headers: tuple[Pair, ...]
    body: bytes

    def to_doc(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": [list(h) for h in self.headers], **pack_body(self.body)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "HeldRequest":
        return cls(doc.get("method", ""), doc.get("path", ""), _pairs(doc.get("headers")), unpack_body(doc))


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The model's answer, which a human approves, overrides or rejects (or judges afterwards)."""

    status: int
    headers: tuple[Pair, ...]
    body: bytes
    truncated: bool = False

    @classmethod
    def of(cls, status: int, headers: list[tuple[bytes, bytes]], body: bytes, truncated: bool = False) -> "Recommendation":
        return cls(status, tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers), body, truncated)

    def wire_headers(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers if k.lower() != "content-length"]

    def to_doc(self) -> dict[str, Any]:
        doc = {"status": self.status, "headers": [list(h) for h in self.headers], **pack_body(self.body)}
        if self.truncated:
            doc["truncated"] = True
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Recommendation":
        return cls(int(doc["status"]), _pairs(doc.get("headers")), unpack_body(doc), bool(doc.get("truncated")))


@dataclass(frozen=True, slots=True)
class Decision:
    """How a ticket was closed: a reviewer's action or verdict, or the policy's expiry."""

    by: str
    at: float
    note: str = ""
    action: str | None = None  # approve, override, reject; release or reject on expiry
    verdict: str | None = None  # agree, disagree (samples)
    response: Any = None  # override: the answer the client receives
    status: int | None = None  # override: its HTTP status
    reason: str | None = None  # why the answer was wrong (gateway.policy.REASONS), for output-quality monitoring

    @property
    def outcome(self) -> str:
        return self.verdict or self.action or ""

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"by": self.by, "at": self.at, "note": self.note}
        if self.verdict is not None:
            doc["verdict"] = self.verdict
        else:
            doc["action"] = self.action
        if self.action == "override":
            doc["response"], doc["status"] = self.response, self.status
        if self.reason is not None:
            doc["reason"] = self.reason
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Decision":
        return cls(str(doc.get("by", "")), float(doc.get("at") or 0), doc.get("note") or "", doc.get("action"),
                   doc.get("verdict"), doc.get("response"), doc.get("status"), doc.get("reason"))


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str
    kind: Kind
    status: str
    request_id: str
    caller: str
    model: str
    version: str
    level: int
    reason: str
    created_at: float
    expires_at: float | None
    request: HeldRequest
    recommendation: Recommendation | None
    confidence: float | None
    policy_version: str
    claimed_by: str | None = None
    claim_until: float | None = None
    decision: Decision | None = None
    api: str = "generic"  # "openai": the client is an OpenAI client (answers and errors in that shape)
    stream: bool = False  # the client asked for a stream
    fingerprint: str | None = None  # of the request (caller, method, target, body): a retry has the same one
    idempotency_key: str | None = None  # the client's Idempotency-Key, if it sent one
    trace: str | None = None  # with tracing on: the `traceparent` of the request's span (a decision's span links to it)

    @classmethod
    def new(cls, *, kind: Kind, request_id: str, caller: str, model: str, version: str, level: int, reason: str,
            request: HeldRequest, recommendation: Recommendation | None, confidence: float | None,
            timeout: float | None, policy_version: str, api: str = "generic", stream: bool = False,
            fingerprint: str | None = None, idempotency_key: str | None = None, trace: str | None = None) -> "Ticket":
        now = time.time()
        return cls(new_ticket_id(), kind, PENDING, request_id, caller, model, version, level, reason, now,
                   now + timeout if timeout is not None else None, request, recommendation, confidence, policy_version,
                   api=api, stream=stream, fingerprint=fingerprint, idempotency_key=idempotency_key, trace=trace)

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    def claimed_by_other(self, reviewer: str, now: float) -> str | None:
        """Who else holds a live claim on this ticket, if anyone."""
        holder = self.claimed_by
        return holder if holder and holder != reviewer and (self.claim_until or 0) > now else None

    def closed(self, status: str, decision: Decision) -> "Ticket":
        return replace(self, status=status, decision=decision)

    def to_doc(self) -> dict[str, Any]:
        doc = {
            "id": self.id, "kind": self.kind, "status": self.status, "request_id": self.request_id, "caller": self.caller,
            "model": self.model, "version": self.version, "level": self.level, "reason": self.reason,
            "created_at": self.created_at, "expires_at": self.expires_at, "request": self.request.to_doc(),
            "recommendation": self.recommendation.to_doc() if self.recommendation else None,
            "confidence": self.confidence, "claimed_by": self.claimed_by, "claim_until": self.claim_until,
            "decision": self.decision.to_doc() if self.decision else None, "policy_version": self.policy_version,
            "api": self.api, "stream": self.stream, "fingerprint": self.fingerprint, "idempotency_key": self.idempotency_key,
        }
        if self.trace is not None:
            doc["trace"] = self.trace
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Ticket":
        rec, decision = doc.get("recommendation"), doc.get("decision")
        return cls(
            doc["id"], doc["kind"], doc["status"], doc["request_id"], doc["caller"], doc["model"], doc["version"],
            int(doc["level"]), doc["reason"], float(doc["created_at"]), doc.get("expires_at"),
            HeldRequest.from_doc(doc.get("request") or {}), Recommendation.from_doc(rec) if rec else None,
            doc.get("confidence"), doc.get("policy_version", ""), doc.get("claimed_by"), doc.get("claim_until"),
            Decision.from_doc(decision) if decision else None, doc.get("api", "generic"), bool(doc.get("stream")),
            doc.get("fingerprint"), doc.get("idempotency_key"), doc.get("trace"),
        )


class DecisionIn(BaseModel):
    """A reviewer's decision: `action` on held and human tickets, `verdict` on samples (strict types, like every control body)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    action: Literal["approve", "override", "reject"] | None = None
    verdict: Literal["agree", "disagree"] | None = None
    note: str = Field("", max_length=4000)
    response: Any = Field(None, description="override only: the answer the client receives (JSON)")
    answer_text: str | None = Field(None, max_length=1_000_000, description=(
        "override only, for an OpenAI client: the reviewer's text, from which the gateway builds the "
        "`chat.completion` (or `text_completion`) the client receives, streamed if it asked for a stream"))
    status: int = Field(200, ge=200, le=599, description="override only: the HTTP status of that answer")
    reason: Reason | None = Field(
        None, description="why the model's answer was wrong: with disagree, override or reject (output-quality monitoring)")

    @model_validator(mode="after")
    def _shape(self) -> "DecisionIn":
        if (self.action is None) == (self.verdict is None):
            raise ValueError("give `action` (approve, override, reject) or, for a sampled ticket, `verdict` (agree, disagree)")
        if self.answer_text is not None and self.response is not None:
            raise ValueError("give `answer_text` (the reviewer's text) or `response` (the whole answer), not both")
        if self.action == "override" and self.response is None and self.answer_text is None:
            raise ValueError("an override needs `response`, the answer the client receives (or `answer_text`)")
        if self.action != "override" and (self.response is not None or self.answer_text is not None):
            raise ValueError("`response` and `answer_text` go only with action override")
        if self.reason is not None and (self.verdict == "agree" or self.action == "approve"):
            raise ValueError("`reason` says why an answer was wrong: it goes with disagree, override or reject")
        return self

    def by(self, reviewer: str, at: float, *, built: Any = None) -> Decision:
        """The decision taken; `built`: the answer the gateway built from `answer_text`."""
        if self.verdict is not None:
            return Decision(reviewer, at, self.note, verdict=self.verdict, reason=self.reason)
        override = self.action == "override"
        response = built if built is not None else self.response
        return Decision(reviewer, at, self.note, action=self.action, response=response if override else None,
                        status=self.status if override else None, reason=self.reason)


def decided_headers(ticket: Ticket) -> list[tuple[bytes, bytes]]:
    """`X-Decision`, `X-Decided-By` and `X-Ticket` on every decided answer (never taken from an upstream)."""
    decision = ticket.decision or Decision("", 0.0)
    return [(b"x-decision", str(decision.action).encode()),
            (b"x-decided-by", decision.by.encode("latin-1", "replace")),
            (b"x-ticket", ticket.id.encode())]


def refusal(ticket: Ticket) -> tuple[str, str]:
    """For a rejected or expired ticket: the error type and the message saying what happened."""
    decision = ticket.decision or Decision("", 0.0)
    if ticket.status == EXPIRED:
        return "expired", f"no reviewer decided within the review timeout; closed as {decision.action} (policy on_expiry)"
    return "rejected", f"a reviewer rejected this request{': ' + decision.note if decision.note else ''}"


def final_answer(ticket: Ticket) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What a generic client receives once a held or human ticket is closed."""
    decision = ticket.decision or Decision("", 0.0)
    decided = decided_headers(ticket)
    if decision.action in ("approve", "release") and ticket.recommendation is not None:
        return ticket.recommendation.status, ticket.recommendation.wire_headers() + decided, ticket.recommendation.body
    if decision.action == "override":
        body = json.dumps(decision.response).encode()
        return decision.status or 200, [(b"content-type", b"application/json")] + decided, body
    kind, message = refusal(ticket)
    error = {"error": {"type": kind, "message": message, "request_id": ticket.request_id, "ticket": ticket.id}}
    return 403, [(b"content-type", b"application/json")] + decided, json.dumps(error).encode()


def public_view(ticket: Ticket) -> dict[str, Any]:
    """A ticket as the review API shows it."""
    view = ticket.to_doc()
    now = time.time()
    view["age_seconds"] = round(now - ticket.created_at, 3)
    if ticket.claim_until and ticket.claim_until < now:
        view["claimed_by"], view["claim_until"] = None, None
    return view
