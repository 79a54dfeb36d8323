"""Users' reports and appeals: a client says an answer it got was discriminatory, harmful or false.

The seed asks for both: "user reports discriminatory treatment" and a "pattern of
similar complaints" are incident triggers, and affected individuals need an "appeal
mechanism". `POST /v1/reports` takes a report on one of the caller's own requests, within
the model's `feedback_window` (the same who-made-which-request facts feedback uses; the
same answer whether a request is someone else's or does not exist). Each report:

- is stored (one per request: a second is 409) and written to the evidence log with who
  reported, the category and the text;
- counts towards the `user_reports` trigger (distinct reporters per model and version);
- with `appeal: true`, queues the decision for human re-review: an `appeal` ticket linked
  to the original request id, which a reviewer upholds (`agree`) or reverses (`disagree`)
  with a note. The outcome is on the report (`GET /v1/reports/{id}`), for its client only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.errors import Conflict, NotFound
from gateway.incidents.counters import TrafficCounters
from gateway.recorder import Recorder
from gateway.review.tickets import HeldRequest, Ticket
from gateway.store import Collections, StaleWrite

REPORTS = "reports"
CATEGORIES = ("discrimination", "harmful", "false", "other")
OUTCOMES = {"agree": "upheld", "disagree": "reversed"}


class AppealQueue(Protocol):
    async def add(self, ticket: Ticket) -> Ticket: ...

    async def get(self, ticket_id: str) -> Ticket: ...


def report_id(request_id: str) -> str:
    """One report per request: its id follows from the request id (a second report finds the first)."""
    return "rp_" + hashlib.blake2b(request_id.encode(), digest_size=10).hexdigest()


class Reports:
    def __init__(self, store: Collections, recorder: Recorder, queue: AppealQueue, counters: TrafficCounters, *,
                 request_of: Callable[[str], Awaitable[dict[str, Any] | None]], policy_version: str) -> None:
        self.store = store
        self.recorder = recorder
        self.queue = queue
        self.counters = counters
        self.request_of = request_of  # who made a request, on which model and version (None: unknown or too old)
        self.policy_version = policy_version

    async def report(self, caller: str, request_id: str, *, category: str, text: str, appeal: bool) -> dict[str, Any]:
        stub = await self.request_of(request_id)
        if stub is None or stub.get("caller") != caller:
            raise NotFound(f"no request {request_id!r} of {caller} within the model's feedback window",
                           param="request_id")
        now = time.time()
        doc = {"id": report_id(request_id), "request_id": request_id, "caller": caller, "model": stub["model"],
               "version": stub["version"], "category": category, "text": text, "appeal": appeal, "ticket": None,
               "at": now}
        try:
            await self.store.insert(REPORTS, doc["id"], doc)
        except StaleWrite:
            raise Conflict(f"request {request_id} was already reported ({doc['id']})", detail={"report": doc["id"]}) from None
        if appeal:
            ticket = await self.queue.add(Ticket.new(
                kind="appeal", request_id=request_id, caller=caller, model=stub["model"], version=stub["version"],
                level=0, reason=f"appeal by {caller} ({category}): {text}"[:2000],
                request=HeldRequest("APPEAL", f"/v1/reports/{doc['id']}", (), text.encode()), recommendation=None,
                confidence=None, timeout=None, policy_version=self.policy_version))
            doc["ticket"] = ticket.id
            await self.store.update(REPORTS, doc["id"], doc, expect={"ticket": None})
        self.counters.reported(stub["model"], stub["version"], caller=caller, category=category)
        await self.recorder.action("user_report", actor=caller, reason=text or f"({category})", report=doc["id"],
                                   request_id=request_id, model=stub["model"], version=stub["version"],
                                   category=category, appeal=appeal, ticket=doc["ticket"])
        return await self._view(doc)

    async def get(self, caller: str, rid: str) -> dict[str, Any]:
        doc = await self.store.get(REPORTS, rid)
        if doc is None or doc.get("caller") != caller:
            raise NotFound(f"no report {rid!r} of {caller}")
        return await self._view(doc)

    async def _view(self, doc: dict[str, Any]) -> dict[str, Any]:
        view = {k: doc[k] for k in ("id", "request_id", "model", "version", "category", "text", "at")}
        if not doc.get("appeal"):
            view["appeal"] = None
            return view
        appeal: dict[str, Any] = {"ticket": doc["ticket"], "status": "pending"}
        try:
            ticket = await self.queue.get(doc["ticket"])
        except NotFound:
            ticket = None
        if ticket is not None and ticket.decision is not None and not ticket.pending:
            decision = ticket.decision
            appeal.update(status=OUTCOMES.get(decision.verdict or "", decision.outcome), note=decision.note,
                          decided_at=decision.at, decided_by=decision.by)
        view["appeal"] = appeal
        return view


async def report_counts(counters: TrafficCounters, model: str, version: str | None, seconds: float = 86400) -> dict[str, Any]:
    """Reports on a model's active version over the last day, by category (for the operator dashboard)."""
    if version is None:
        return {"total": 0, "by_category": {}, "reporters": 0}
    counts = await counters.quality(model, version, seconds)
    return {"total": int(counts.get("rep_n", 0)),
            "by_category": {c: int(counts[f"rep:{c}"]) for c in CATEGORIES if counts.get(f"rep:{c}")},
            "reporters": sum(1 for name, v in counts.items() if name.startswith("rpu:") and v > 0)}
