"""`/review/tickets`: the reviewer's queue (reviewer; operators may read)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import body_as, caller, ok
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.errors import BadRequest
from gateway.proxy.stages import Callers
from gateway.review.queue import ReviewQueue
from gateway.review.tickets import DecisionIn, public_view

_STATUSES = ("pending", "decided", "expired", "all")


class ReviewApi:
    def __init__(self, callers: Callers, queue: ReviewQueue, *, max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.queue = queue
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/review/tickets", self.list_tickets, methods=["GET"]),
            Route("/review/tickets/{id}", self.show, methods=["GET"]),
            Route("/review/tickets/{id}/claim", self.claim, methods=["POST"]),
            Route("/review/tickets/{id}/release", self.release, methods=["POST"]),
            Route("/review/tickets/{id}/decision", self.decide, methods=["POST"]),
        ]

    async def list_tickets(self, request: Request) -> Response:
        caller(request, self.callers, "reviewer", "operator")
        status = request.query_params.get("status", "pending")
        if status not in _STATUSES:
            raise BadRequest(f"status must be one of {', '.join(_STATUSES)} (got {status!r})")
        try:
            limit = min(500, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise BadRequest("limit must be a number") from None
        tickets = await self.queue.list(status=None if status == "all" else status, model=request.query_params.get("model"),
                                        kind=request.query_params.get("kind"), limit=limit)
        return ok({"tickets": [public_view(t) for t in tickets]})

    async def show(self, request: Request) -> Response:
        caller(request, self.callers, "reviewer", "operator")
        return ok(public_view(await self.queue.get(request.path_params["id"])))

    async def claim(self, request: Request) -> Response:
        who = caller(request, self.callers, "reviewer")
        return ok(public_view(await self.queue.claim(request.path_params["id"], who.id)))

    async def release(self, request: Request) -> Response:
        who = caller(request, self.callers, "reviewer", "operator")
        return ok(public_view(await self.queue.release(request.path_params["id"], who.id, force=who.has("operator"))))

    async def decide(self, request: Request) -> Response:
        who = caller(request, self.callers, "reviewer")
        decision = await body_as(request, DecisionIn, limit=self.max_body_bytes)
        return ok(public_view(await self.queue.decide(request.path_params["id"], who.id, decision)))
