"""`/review/tickets`: the reviewer's queue (reviewer; operators may read)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import body_as, caller, ok
from gateway.errors import BadRequest
from gateway.review.tickets import DecisionIn, public_view

_STATUSES = ("pending", "decided", "expired", "all")


async def list_tickets(request: Request) -> Response:
    caller(request, "reviewer", "operator")
    status = request.query_params.get("status", "pending")
    if status not in _STATUSES:
        raise BadRequest(f"status must be one of {', '.join(_STATUSES)} (got {status!r})")
    try:
        limit = min(500, max(1, int(request.query_params.get("limit", "100"))))
    except ValueError:
        raise BadRequest("limit must be a number") from None
    tickets = await request.app.state.gateway.review.list(
        status=None if status == "all" else status, model=request.query_params.get("model"),
        kind=request.query_params.get("kind"), limit=limit,
    )
    return ok({"tickets": [public_view(t) for t in tickets]})


async def show(request: Request) -> Response:
    caller(request, "reviewer", "operator")
    return ok(public_view(await request.app.state.gateway.review.get(request.path_params["id"])))


async def claim(request: Request) -> Response:
    who = caller(request, "reviewer")
    return ok(public_view(await request.app.state.gateway.review.claim(request.path_params["id"], who.id)))


async def release(request: Request) -> Response:
    who = caller(request, "reviewer", "operator")
    ticket = await request.app.state.gateway.review.release(request.path_params["id"], who.id, force=who.has("operator"))
    return ok(public_view(ticket))


async def decide(request: Request) -> Response:
    who = caller(request, "reviewer")
    decision = await body_as(request, DecisionIn)
    return ok(public_view(await request.app.state.gateway.review.decide(request.path_params["id"], who.id, decision)))


def routes() -> list[Route]:
    return [
        Route("/review/tickets", list_tickets, methods=["GET"]),
        Route("/review/tickets/{id}", show, methods=["GET"]),
        Route("/review/tickets/{id}/claim", claim, methods=["POST"]),
        Route("/review/tickets/{id}/release", release, methods=["POST"]),
        Route("/review/tickets/{id}/decision", decide, methods=["POST"]),
    ]
