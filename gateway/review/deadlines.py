"""Which pending tickets can expire, and when: a small collection of deadlines beside the tickets.

Post-hoc samples and appeals wait for a reviewer without a deadline, and at level 1 the
gateway samples 15 % of its requests: the oldest pending tickets are soon all samples, and
a sweep that read the oldest pending tickets would never reach a held one. The sweep reads
this collection instead, one small document per ticket that has a deadline, written
before its ticket (a deadline without a ticket is dropped by the next sweep; a ticket is
never stored without its deadline) and deleted when its ticket closes.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.review.tickets import PENDING, Ticket
from gateway.store import Collections, StoreUnavailable

log = logging.getLogger("gateway.review")

DEADLINES = "ticket_deadlines"
SCAN_LIMIT = 10_000  # deadlines read per sweep page: every pending held ticket of a busy replica


class Deadlines:
    def __init__(self, store: Collections) -> None:
        self.store = store

    async def add(self, ticket: Ticket) -> None:
        """Keep the ticket's deadline (before the ticket itself is stored); nothing for a ticket without one."""
        if ticket.expires_at is not None:
            await self.store.insert(DEADLINES, ticket.id, _doc(ticket.id, ticket.model, ticket.expires_at))

    async def forget(self, ticket_id: str) -> None:
        """The ticket closed: its deadline goes (best effort: a sweep drops what is left)."""
        try:
            await self.store.delete(DEADLINES, ticket_id)
        except StoreUnavailable as exc:
            log.warning("could not drop the deadline of ticket %s: %s (the next sweep will)", ticket_id, exc)

    async def due(self, now: float) -> list[str]:
        """Ids of the tickets whose deadline has passed, oldest first."""
        docs = await self.store.query(DEADLINES, where={"status": PENDING}, newest_first=False, limit=SCAN_LIMIT)
        return [doc["id"] for doc in docs if float(doc.get("expires_at") or 0.0) <= now]

    async def soonest(self) -> dict[str, float]:
        """Each model's soonest deadline among its pending tickets (for the metrics)."""
        soonest: dict[str, float] = {}
        for doc in await self.store.query(DEADLINES, where={"status": PENDING}, newest_first=False, limit=SCAN_LIMIT):
            model, expires = doc.get("model") or "-", float(doc.get("expires_at") or 0.0)
            soonest[model] = min(soonest.get(model, expires), expires)
        return soonest

    async def backfill(self, tickets: list[dict[str, Any]]) -> None:
        """Deadlines for pending tickets stored without one (by a gateway before this collection existed)."""
        docs = [_doc(t["id"], t.get("model"), float(t["expires_at"])) for t in tickets
                if t.get("status") == PENDING and t.get("expires_at") is not None]
        if docs:
            await self.store.insert_many(DEADLINES, docs)  # existing ids are left alone


def _doc(ticket_id: str, model: str | None, expires_at: float) -> dict[str, Any]:
    # "status" only so that reading them takes the store's status index, not a walk of every record
    return {"id": ticket_id, "status": PENDING, "model": model, "expires_at": expires_at}
