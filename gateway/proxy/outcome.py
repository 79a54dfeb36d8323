"""A closed ticket as the answer its client receives: in the client's own shape, whole or streamed.

Generic clients get the gateway's answer (`gateway.review.tickets.final_answer`). OpenAI
clients get what an OpenAI server would send: the model's answer on approval, the
reviewer's answer as a completion on override (text becomes a `chat.completion`), and on
rejection or expiry an error in the OpenAI shape (403, which the SDKs raise and do not
retry); streaming clients get the same as server-sent events.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.openai.completions import completion_from_text, error_event, is_event_stream, stream_of
from gateway.openai.errors import openai_error
from gateway.review.tickets import Ticket, decided_headers, final_answer, refusal

_JSON = (b"content-type", b"application/json")


def answer_for(ticket: Ticket) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The whole answer for a closed ticket."""
    if ticket.api != "openai":
        return final_answer(ticket)
    decided = decided_headers(ticket)
    completion = _completion(ticket)
    if completion is None:  # approved or released: the model's own answer
        if ticket.recommendation is not None and ticket.decision and ticket.decision.action in ("approve", "release"):
            return ticket.recommendation.status, ticket.recommendation.wire_headers() + decided, ticket.recommendation.body
        return 403, [_JSON] + decided, json.dumps(_refused(ticket)).encode()
    status = (ticket.decision.status if ticket.decision else None) or 200
    return status, [_JSON] + decided, json.dumps(completion).encode()


def stream_for(ticket: Ticket) -> bytes:
    """The events a streaming client reads for a closed ticket (the SSE headers are already sent)."""
    decision = ticket.decision
    if decision is not None and decision.action in ("approve", "release") and ticket.recommendation is not None:
        body = ticket.recommendation.body
        if is_event_stream(body):
            return body
        try:
            return stream_of(json.loads(body))
        except (ValueError, AttributeError):
            return error_event(openai_error(502, "internal", "the model's answer cannot be streamed as a completion",
                                            request_id=ticket.request_id, detail={"ticket": ticket.id}))
    completion = _completion(ticket)
    if completion is not None:
        return stream_of(completion)  # the review queue accepts only text or a completion with choices here
    return error_event(_refused(ticket))


def _completion(ticket: Ticket) -> dict[str, Any] | None:
    """The reviewer's override as a completion: their text, built; or the completion they wrote whole."""
    decision = ticket.decision
    if decision is None or decision.action != "override":
        return None
    response = decision.response
    if isinstance(response, str):
        return completion_from_text(response, model=ticket.model, path=ticket.request.path)
    return response if isinstance(response, dict) else {"response": response}


def _refused(ticket: Ticket) -> dict[str, Any]:
    kind, message = refusal(ticket)
    return openai_error(403, kind, message, request_id=ticket.request_id, detail={"ticket": ticket.id})
