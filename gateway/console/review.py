"""The reviewer console: the pending queue (live over server-sent events), a ticket, its decision.

Decisions go through the review queue exactly like `POST /review/tickets/{id}/decision`, with
the session's caller as the reviewer; the queue's own rules (final decisions, claims,
nobody reviews their own request) answer for themselves.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.api.bodies import parse_json
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.configfile import describe_errors
from gateway.console.session import Session, Sessions, cookie_value
from gateway.console.web import (
    KEEPALIVE_SECONDS,
    SECURITY_HEADERS,
    Outcome,
    QueueHub,
    action,
    env,
    field,
    page,
    pretty_json,
    render,
)
from gateway.errors import BadRequest, NotFound
from gateway.policy import REASONS
from gateway.review.queue import ReviewQueue
from gateway.review.reading import answer_text, apply_fields, conversation, field_values
from gateway.review.tickets import PENDING, DecisionIn, public_view

QUEUE_LIMIT = 200
KINDS = ("hold", "human", "sample", "appeal")


def _kind(request: Request) -> str | None:
    kind = request.query_params.get("kind")
    return kind if kind in KINDS else None


def _body_text(part: dict[str, Any] | None) -> tuple[str, bool]:
    """(text to show, whether it is JSON)."""
    if not part:
        return "", False
    body = part.get("body", "")
    if part.get("body_encoding") == "base64":
        size = len(base64.b64decode(body)) if body else 0
        return f"(binary body, {size} bytes, base64)\n{body}", False
    shown = pretty_json(body)
    return (shown, True) if shown is not None else (body, False)


def _raw(part: dict[str, Any] | None) -> bytes | None:
    """A ticket part's body as bytes (None when there is no part)."""
    if not part:
        return None
    body = part.get("body", "")
    if part.get("body_encoding") == "base64":
        return base64.b64decode(body) if body else b""
    return body.encode() if isinstance(body, str) else b""


_ACTIONS = ("approve", "override", "reject")
_VERDICTS = ("agree", "disagree")
_SAID = {
    "approve": "Approved {id}: the client receives the model's answer.",
    "override": "Overrode {id}: the client receives your answer (HTTP {status}).",
    "reject": "Rejected {id}: the client receives a refusal.",
    "agree": "Recorded: you agree with the answer served for {id}.",
    "disagree": "Recorded: you disagree with the answer served for {id}.",
}


def _override_fields(form, fields: tuple[Any, ...], body: bytes | None) -> Any | None:
    """The model's answer with the form's review fields applied, or None when the form has none."""
    chosen = {}
    for key, value in form.multi_items():
        if key.startswith("field.") and key[6:].isdigit() and isinstance(value, str) and value != "":
            chosen[int(key[6:])] = value
    return apply_fields(fields, body, chosen) if chosen and fields else None


def decision_from(form, *, fields: tuple[Any, ...] = (), answer: bytes | None = None) -> DecisionIn:
    """A `DecisionIn` from the console's form, or a 400 that says what is wrong.

    Override takes, in this order: the reviewer's text (`answer_text`, OpenAI clients), the
    review fields (`field.N`, applied to the model's answer `answer`), the raw JSON
    (`response`); `override-raw` takes the raw JSON whatever else the form holds.
    """
    choice = field(form, "decision", required=True, what="the decision")
    raw_only = choice == "override-raw"
    if raw_only:
        choice = "override"
    data: dict[str, Any] = {"note": field(form, "note", max_length=4000, what="the note")}
    reason = field(form, "reason", what="the reason")
    if reason:
        data["reason"] = reason  # checked against gateway.policy.REASONS by DecisionIn
    if choice in _VERDICTS:
        data["verdict"] = choice
    elif choice in _ACTIONS:
        data["action"] = choice
        text_answer = form.get("answer_text")
        built = None if raw_only or choice != "override" or isinstance(text_answer, str) else \
            _override_fields(form, fields, answer)
        if choice == "override" and not raw_only and isinstance(text_answer, str):
            if not text_answer.strip():
                raise BadRequest("an override needs the answer the client receives: type it")
            data["answer_text"] = text_answer
        elif choice == "override" and built is not None:
            data["response"] = built
        elif choice == "override":
            text = form.get("response")
            text = text if isinstance(text, str) else ""
            if not text.strip():
                raise BadRequest("an override needs the answer the client receives (JSON)")
            data["response"] = parse_json(text, what="the override answer")
            status = field(form, "status") or "200"
            if not (status.isascii() and status.isdigit()):
                raise BadRequest(f"the override status must be a number (got {status!r})")
            data["status"] = int(status)
    else:
        raise BadRequest(f"unknown decision {choice!r}; one of {', '.join(_ACTIONS + _VERDICTS)}")
    try:
        return DecisionIn.model_validate(data)
    except ValidationError as exc:
        raise BadRequest("; ".join(describe_errors(exc))) from None


class ReviewPages:
    def __init__(self, sessions: Sessions, hub: QueueHub, queue: ReviewQueue, *,
                 max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES,
                 review_fields: Callable[[str], tuple[Any, ...] | None] | None = None) -> None:
        self.sessions = sessions
        self.review_fields = review_fields  # a model's policy `review_fields` (generic JSON answers), by model name
        self.hub = hub
        self.queue = queue
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/console/review", self.queue_page, methods=["GET"]),
            Route("/console/review/rows", self.queue_rows, methods=["GET"]),
            Route("/console/review/events", self.events, methods=["GET"]),
            Route("/console/review/{id}", self.ticket_page, methods=["GET"]),
            Route("/console/review/{id}/claim", self.claim, methods=["POST"]),
            Route("/console/review/{id}/release", self.release, methods=["POST"]),
            Route("/console/review/{id}/decide", self.decide, methods=["POST"]),
        ]

    def _fields(self, model: str) -> tuple[Any, ...]:
        return (self.review_fields(model) or ()) if self.review_fields is not None else ()

    async def _pending(self, request: Request) -> list[dict[str, Any]]:
        tickets = await self.queue.list(status=PENDING, kind=_kind(request), limit=QUEUE_LIMIT)
        return [public_view(t) for t in tickets]

    @page("reviewer", "operator")
    async def queue_page(self, request: Request, session: Session) -> Response:
        return render(request, "review.html", {"title": "Review queue", "tickets": await self._pending(request),
                                               "kind": _kind(request), "limit": QUEUE_LIMIT}, session=session)

    @page("reviewer", "operator")
    async def queue_rows(self, request: Request, session: Session) -> Response:
        """The queue's rows alone, for the page's script to swap in when an event arrives."""
        html = env.get_template("_rows.html").render(tickets=await self._pending(request), session=session)
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    @page("reviewer", "operator")
    async def events(self, request: Request, session: Session) -> Response:
        """Every queue event on any replica, as `event: queue` messages; a comment line every 15 s keeps it open."""
        sid = cookie_value(request)

        async def stream():
            queue = self.hub.open(session.key)
            try:
                yield "retry: 2000\n: connected\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        if await self.sessions.find(sid) is None:  # signed out (on any replica) or expired
                            yield "event: signed-out\ndata: {}\n\n"
                            return
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:  # this session signed out here
                        yield "event: signed-out\ndata: {}\n\n"
                        return
                    yield f"event: queue\ndata: {json.dumps(item, separators=(',', ':'))}\n\n"
            finally:
                self.hub.close(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no",
                                          "x-content-type-options": "nosniff"})

    @page("reviewer", "operator")
    async def ticket_page(self, request: Request, session: Session) -> Response:
        try:
            ticket = public_view(await self.queue.get(request.path_params["id"]))
        except NotFound as exc:
            return render(request, "result.html", {"title": "No such ticket", "ok": False, "message": exc.message,
                                                   "back": "/console/review"}, status=404, session=session)
        request_body, _ = _body_text(ticket.get("request"))
        recommendation = ticket.get("recommendation")
        recommendation_body, is_json = _body_text(recommendation)
        override = recommendation_body if is_json else ""
        chat = assistant = None
        fields: list[dict[str, Any]] = []
        answer = _raw(recommendation)
        if ticket.get("api") == "openai":
            chat = conversation(_raw(ticket.get("request")) or b"")
            assistant = answer_text(answer) if answer is not None else None
        elif self._fields(ticket["model"]):
            fields = field_values(self._fields(ticket["model"]), answer)
        decided = (ticket.get("decision") or {}).get("response")
        decided_text = answer_text(json.dumps(decided).encode()) if ticket.get("api") == "openai" and decided else None
        can_decide = ticket["status"] == PENDING and session.has("reviewer")
        return render(request, "ticket.html", {
            "title": f"Ticket {ticket['id']}", "ticket": ticket, "request_body": request_body,
            "recommendation": recommendation, "recommendation_body": recommendation_body, "override": override,
            "chat": chat, "assistant": assistant, "fields": fields, "decided_text": decided_text,
            "text_override": ticket.get("api") == "openai" and ticket["kind"] in ("hold", "human"),
            "can_decide": can_decide, "own_request": ticket["caller"] == session.caller, "reasons": REASONS,
            "can_release": ticket["status"] == PENDING and ticket.get("claimed_by")
                           and (ticket["claimed_by"] == session.caller or session.has("operator")),
        }, session=session)

    # actions -------------------------------------------------------------------------------
    @action("reviewer")
    async def claim(self, request: Request, session: Session, form) -> Outcome:
        ticket = await self.queue.claim(request.path_params["id"], session.caller)
        return Outcome(f"You claimed {ticket.id}; other reviewers cannot decide it while your claim lasts.",
                       public_view(ticket), back=f"/console/review/{ticket.id}")

    @action("reviewer", "operator")
    async def release(self, request: Request, session: Session, form) -> Outcome:
        ticket = await self.queue.release(request.path_params["id"], session.caller, force=session.has("operator"))
        return Outcome(f"Released {ticket.id}: any reviewer may take it.", public_view(ticket),
                       back=f"/console/review/{ticket.id}")

    @action("reviewer")
    async def decide(self, request: Request, session: Session, form) -> Outcome:
        fields, answer = (), None
        if any(key.startswith("field.") for key in form.keys()):
            held = await self.queue.get(request.path_params["id"])
            fields = self._fields(held.model)
            answer = held.recommendation.body if held.recommendation is not None else None
        decision = decision_from(form, fields=fields, answer=answer)
        ticket = await self.queue.decide(request.path_params["id"], session.caller, decision)
        said = _SAID[decision.action or decision.verdict].format(id=ticket.id, status=decision.status)
        return Outcome(said, public_view(ticket), back="/console/review")
