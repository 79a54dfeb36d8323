"""`GET /v1/decisions/{id}`: a held request's outcome, for the client who asked (or an operator).

Pending: 202 with the ticket's status (`Prefer: wait=N` long-polls). Closed: the final
answer itself, as the client would have received it, with `X-Decision` and `X-Decided-By`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import caller, ok
from gateway.errors import NotFound
from gateway.policy import Review
from gateway.proxy.prefer import parse_prefer
from gateway.proxy.stages import Callers
from gateway.proxy.outcome import answer_for
from gateway.review.queue import ReviewQueue


class DecisionsApi:
    def __init__(self, callers: Callers, queue: ReviewQueue, review: Review) -> None:
        self.callers = callers
        self.queue = queue
        self.review = review

    def routes(self) -> list[Route]:
        return [Route("/v1/decisions/{id}", self.decision, methods=["GET"])]

    async def decision(self, request: Request) -> Response:
        who = caller(request, self.callers, "client", "operator")
        ticket_id = request.path_params["id"]
        try:
            ticket = await self.queue.get(ticket_id)
        except NotFound:
            ticket = None
        if ticket is None or ticket.kind in ("sample", "appeal") or (ticket.caller != who.id and not who.has("operator")):
            raise NotFound(f"no decision {ticket_id!r} for {who.id}")  # the same answer whether it exists or not
        if ticket.pending:
            prefer = parse_prefer(request.headers.raw)
            if prefer.wait and not prefer.respond_async:
                ticket = await self.queue.wait(ticket_id, min(prefer.wait, self.review.max_hold_wait)) or ticket
        if ticket.pending:
            return ok({"ticket": ticket_id, "status": ticket.status, "reason": ticket.reason,
                       "expires_at": ticket.expires_at, "request_id": ticket.request_id}, status=202,
                      headers={"retry-after": "5"})
        status, headers, body = answer_for(ticket)
        response = Response(body, status_code=status)
        for name, value in headers:
            response.headers.append(name.decode("latin-1"), value.decode("latin-1"))
        response.headers["x-request-id"] = ticket.request_id
        response.headers["x-oversight-route"] = "human" if ticket.kind == "human" else "held"
        response.headers["x-model-version"] = ticket.version
        return response
