"""Retro-review: the recorded decisions of an incident's window, queued for post-hoc human review.

The seed's "historical decisions audited for impact" and "route discriminatory cases to
human review": an operator (or a trigger's orders) picks an incident and, optionally, one
group or one outcome (the model's `fairness` pointers say where they are); every matching
decision the evidence logs hold for the window becomes a post-hoc review ticket
(`kind: sample`, decided with a verdict: agree or disagree), at most
`incidents.retro_review_limit` of them. The answer was already served; the verdicts say
which decisions a human would not have made, which the affected-individuals report names
as overturned. Progress is read from the tickets themselves, so it is the same on every
replica; the review queued and the review completed go on the incident's timeline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from gateway.errors import BadRequest, NotFound
from gateway.ids import random_hex
from gateway.incidents.records import Event, Incident
from gateway.incidents.window import Decided, WindowDecisions
from gateway.review.tickets import HeldRequest, Recommendation, Ticket
from gateway.store import Collections, StaleWrite

RETRO = "retro_reviews"


class Queue(Protocol):
    async def add(self, ticket: Ticket) -> Ticket: ...

    async def get(self, ticket_id: str) -> Ticket: ...


class Timeline(Protocol):
    async def get(self, incident_id: str) -> Incident: ...

    async def add_event(self, incident_id: str, event: Event) -> Incident: ...


class RetroReviews:
    def __init__(self, store: Collections, queue: Queue, incidents: Timeline, window: WindowDecisions, *, limit: int,
                 policy_version: str) -> None:
        self.store = store
        self.queue = queue
        self.incidents = incidents
        self.window = window
        self.limit = limit
        self.policy_version = policy_version

    async def start(self, incident_id: str, *, group: str | None, outcome: str | None, actor: str,
                    reason: str) -> dict[str, Any]:
        """Queue the window's decisions (matching `group` and `outcome`, when given) for post-hoc review."""
        if not reason or not reason.strip():
            raise BadRequest("a reason is required for a retro-review")
        incident = await self.incidents.get(incident_id)
        if incident.model is None:
            raise BadRequest(f"incident {incident_id} names no model: there are no decisions to review")
        until = incident.resolved_at or time.time()
        decided = await asyncio.to_thread(self.window.read, incident.since, until, incident.model)
        chosen = [d for d in decided if _matches(d, group, outcome)][: self.limit]
        review_id = "rr_" + random_hex(8)
        tickets = []
        for d in chosen:
            ticket = await self.queue.add(_ticket(d, incident, review_id, reason, self.policy_version))
            tickets.append(ticket.id)
        doc = {"id": review_id, "incident": incident.id, "status": "open", "filters": {"group": group, "outcome": outcome},
               "window": {"since": incident.since, "until": until}, "matched": len(chosen),
               "truncated": len([d for d in decided if _matches(d, group, outcome)]) > len(chosen),
               "tickets": tickets, "created_by": actor, "created_at": time.time(), "reason": reason}
        await self.store.insert(RETRO, review_id, doc)
        filters = ", ".join(f"{k} {v}" for k, v in doc["filters"].items() if v is not None) or "all decisions"
        await self.incidents.add_event(incident.id, Event(
            time.time(), "retro_review_queued", actor,
            f"{len(tickets)} recorded decision(s) of the window ({filters}) queued for human review ({review_id}): {reason}",
            {"review": review_id, "tickets": len(tickets), "filters": doc["filters"]}))
        return await self._progress(doc)

    async def of_incident(self, incident_id: str) -> list[dict[str, Any]]:
        """Every retro-review of an incident with its progress and results."""
        docs = await self.store.query(RETRO, where={"incident": incident_id}, limit=100, newest_first=False)
        return [await self._progress(doc) for doc in docs]

    async def get(self, review_id: str) -> dict[str, Any]:
        doc = await self.store.get(RETRO, review_id)
        if doc is None:
            raise NotFound(f"no retro-review {review_id!r}")
        return await self._progress(doc)

    async def _progress(self, doc: dict[str, Any]) -> dict[str, Any]:
        verdicts = {"agree": 0, "disagree": 0}
        pending, disagreed = 0, []
        for ticket_id in doc["tickets"]:
            try:
                ticket = await self.queue.get(ticket_id)
            except NotFound:
                continue
            if ticket.decision is None:
                pending += 1
                continue
            verdict = ticket.decision.verdict or ticket.decision.action or ""
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
            if verdict == "disagree":
                disagreed.append({"request_id": ticket.request_id, "ticket": ticket.id, "by": ticket.decision.by,
                                  "note": ticket.decision.note})
        total = len(doc["tickets"])
        out = {k: v for k, v in doc.items() if k != "tickets"}
        out.update({"total": total, "decided": total - pending, "pending": pending, "verdicts": verdicts,
                    "disagreed": disagreed, "tickets": doc["tickets"]})
        if pending == 0 and doc.get("status") == "open":
            await self._complete(doc, out)
            out["status"] = "done"
        return out

    async def _complete(self, doc: dict[str, Any], progress: dict[str, Any]) -> None:
        """Once every ticket is decided: close the review, and put its results on the incident (once)."""
        try:
            await self.store.update(RETRO, doc["id"], {**doc, "status": "done", "done_at": time.time()},
                                    expect={"status": "open"})
        except StaleWrite:
            return  # another replica (or reader) closed it
        v = progress["verdicts"]
        await self.incidents.add_event(doc["incident"], Event(
            time.time(), "retro_review_done", "gateway",
            f"retro-review {doc['id']} complete: {progress['total']} reviewed, {v.get('agree', 0)} agreed, "
            f"{v.get('disagree', 0)} disagreed (overturned)",
            {"review": doc["id"], "verdicts": v, "disagreed": [d["request_id"] for d in progress["disagreed"]]}))


def _matches(d: Decided, group: str | None, outcome: str | None) -> bool:
    return (group is None or d.group == group) and (outcome is None or str(d.outcome) == outcome)


def _ticket(d: Decided, incident: Incident, review_id: str, reason: str, policy_version: str) -> Ticket:
    headers = tuple((str(k), str(v)) for k, v in (d.request.get("headers") or ()))
    request = HeldRequest(str(d.request.get("method", "POST")), str(d.request.get("path", "")), headers, d.request_body)
    recommendation = Recommendation(int(d.response_status or d.status or 0), (("content-type", "application/json"),),
                                    d.response_body)
    return Ticket.new(kind="sample", request_id=d.request_id, caller=d.caller or "", model=d.model, version=d.version,
                      level=0, reason=f"retro-review {review_id} of incident {incident.id}: {reason}", request=request,
                      recommendation=recommendation, confidence=None, timeout=None, policy_version=policy_version)
