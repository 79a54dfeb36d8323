"""The review queue: tickets in the store, decisions from any replica, expiry that fails closed.

A held request's ticket is stored before the client hears anything. A decision taken
on any replica is announced on the store's `decisions` topic, which wakes a client
waiting (`Prefer: wait`) on whichever replica it is connected to. Tickets not decided
within the policy's `review.timeout` are closed with `review.on_expiry` by whichever
replica's sweep gets there first (compare-and-set: once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from gateway.background import every
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.policy import Review
from gateway.recording import NullRecorder, Recorder
from gateway.review.tickets import DECIDED, EXPIRED, PENDING, DecisionIn
from gateway.store import StaleWrite, Store, StoreUnavailable

log = logging.getLogger("gateway.review")

TICKETS = "tickets"
DECISIONS_TOPIC = "decisions"
SAMPLE_BATCH_SECONDS = 1.0  # samples block nobody; batching them saves a store commit (and fsync) per sample
CREATED_TOPIC = "tickets"


class ReviewQueue:
    def __init__(self, store: Store, review: Review, recorder: Recorder | None = None, on_verdict=None) -> None:
        self.store = store
        self.review = review
        self.on_verdict = on_verdict  # reviewers' verdicts are ground truth for accuracy monitoring
        self.recorder: Recorder = recorder or NullRecorder()
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._listeners: list[Any] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._unsubscribe: list[Any] = []
        self._samples: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None

    # lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._unsubscribe.append(self.store.subscribe(DECISIONS_TOPIC, self._on_decided))
        self._unsubscribe.append(self.store.subscribe(CREATED_TOPIC, self._on_event))
        interval = max(0.2, min(5.0, self.review.timeout / 4))
        self._sweeper = asyncio.create_task(every(interval, self.expire_due, "review expiry sweep", log),
                                            name="gateway-review-expiry")

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._flusher is not None:
            await self._flusher
        await self._flush_samples()

    def add_listener(self, listener) -> None:
        """Called with every queue event (created, claimed, decided), e.g. for live consoles."""
        self._listeners.append(listener)

    def remove_listener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # holding -----------------------------------------------------------------------
    async def add(self, ticket: dict[str, Any]) -> dict[str, Any]:
        """Store a new ticket durably, then announce it."""
        await self.store.insert(TICKETS, ticket["id"], ticket)
        await self._announce(CREATED_TOPIC, {"event": "created", "ticket": ticket["id"], "model": ticket["model"]})
        return ticket

    def add_sample(self, ticket: dict[str, Any]) -> None:
        """Queue a post-hoc sample; samples are stored in batches (nobody waits on them)."""
        self._samples.append(ticket)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(SAMPLE_BATCH_SECONDS)
        await self._flush_samples()

    async def _flush_samples(self) -> None:
        while self._samples:
            batch, self._samples = self._samples[:500], self._samples[500:]
            try:
                await self.store.insert_many(TICKETS, batch)
            except StoreUnavailable as exc:
                log.error("could not store %d sampled ticket(s): %s; retrying", len(batch), exc)
                self._samples[:0] = batch
                await asyncio.sleep(1.0)
                continue
            await self._announce(CREATED_TOPIC, {"event": "created", "tickets": [t["id"] for t in batch], "kind": "sample"})

    async def get(self, ticket_id: str) -> dict[str, Any]:
        ticket = await self.store.get(TICKETS, ticket_id)
        if ticket is None:
            raise NotFound(f"no ticket {ticket_id!r}")
        return ticket

    async def list(self, *, status: str | None = PENDING, model: str | None = None, kind: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        where: dict[str, Any] = {}
        if status:
            where["status"] = status
        if model:
            where["model"] = model
        if kind:
            where["kind"] = kind
        return await self.store.query(TICKETS, where=where, limit=limit)

    # reviewing ---------------------------------------------------------------------
    async def claim(self, ticket_id: str, reviewer: str) -> dict[str, Any]:
        ticket = await self.get(ticket_id)
        self._require_pending(ticket)
        now = time.time()
        holder = ticket.get("claimed_by")
        if holder and holder != reviewer and (ticket.get("claim_until") or 0) > now:
            raise Conflict(f"ticket {ticket_id} is claimed by {holder} until {ticket['claim_until']:.0f}",
                           detail={"claimed_by": holder, "claim_until": ticket["claim_until"]})
        updated = {**ticket, "claimed_by": reviewer, "claim_until": now + self.review.claim_lease}
        await self._replace(ticket, updated)
        await self._announce(CREATED_TOPIC, {"event": "claimed", "ticket": ticket_id, "by": reviewer})
        return updated

    async def release(self, ticket_id: str, reviewer: str, *, force: bool = False) -> dict[str, Any]:
        ticket = await self.get(ticket_id)
        self._require_pending(ticket)
        if ticket.get("claimed_by") not in (None, reviewer) and not force:
            raise Conflict(f"ticket {ticket_id} is claimed by {ticket['claimed_by']}, not by {reviewer}")
        updated = {**ticket, "claimed_by": None, "claim_until": None}
        await self._replace(ticket, updated)
        await self._announce(CREATED_TOPIC, {"event": "released", "ticket": ticket_id, "by": reviewer})
        return updated

    async def decide(self, ticket_id: str, reviewer: str, decision: DecisionIn) -> dict[str, Any]:
        """Close a ticket with a reviewer's decision. Final: a second decision gets 409."""
        ticket = await self.get(ticket_id)
        self._require_pending(ticket)
        if ticket["caller"] == reviewer:
            raise Forbidden(f"{reviewer} made request {ticket['request_id']} and cannot also review it")
        holder = ticket.get("claimed_by")
        if holder and holder != reviewer and (ticket.get("claim_until") or 0) > time.time():
            raise Conflict(f"ticket {ticket_id} is claimed by {holder}", detail={"claimed_by": holder})
        if ticket["kind"] == "sample":
            if decision.verdict is None:
                raise BadRequest("a sampled ticket takes a `verdict`: agree or disagree (the answer was already served)")
        else:
            if decision.action is None:
                raise BadRequest("a held ticket takes an `action`: approve, override or reject")
            if decision.action == "approve" and ticket.get("recommendation") is None:
                raise BadRequest("there is no model answer to approve (the model was not called): override or reject")
        record = {"by": reviewer, "at": time.time(), "note": decision.note}
        if decision.verdict is not None:
            record["verdict"] = decision.verdict
        else:
            record["action"] = decision.action
            if decision.action == "override":
                record["response"] = decision.response
                record["status"] = decision.status
        updated = {**ticket, "status": DECIDED, "decision": record}
        await self._replace(ticket, updated)
        if self.on_verdict is not None:
            self.on_verdict(ticket, record)
        await self.recorder.action(
            "review_decision", actor=reviewer, reason=decision.note or "(no note)",
            ticket=ticket_id, request_id=ticket["request_id"], model=ticket["model"], version=ticket["version"],
            decision={k: v for k, v in record.items() if k not in ("by", "at", "note")},
        )
        await self._announce(DECISIONS_TOPIC, {"event": "decided", "ticket": ticket_id})
        return updated

    # waiting -----------------------------------------------------------------------
    async def wait(self, ticket_id: str, timeout: float) -> dict[str, Any] | None:
        """The closed ticket, if a decision comes within `timeout` seconds; else None."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters[ticket_id].append(fut)
        try:
            ticket = await self.get(ticket_id)
            if ticket["status"] != PENDING:
                return ticket
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                return None
            ticket = await self.get(ticket_id)
            return ticket if ticket["status"] != PENDING else None
        finally:
            waiters = self._waiters.get(ticket_id)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[ticket_id]

    def _on_decided(self, message: dict[str, Any]) -> None:
        for fut in self._waiters.get(message.get("ticket", ""), ()):
            if not fut.done():
                fut.set_result(None)
        self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:
                log.exception("review listener failed")

    # expiry ------------------------------------------------------------------------
    async def expire_due(self, now: float | None = None) -> int:
        """Close every pending held or human ticket past its deadline with `on_expiry`."""
        now = time.time() if now is None else now
        closed = 0
        for ticket in await self.store.query(TICKETS, where={"status": PENDING}, newest_first=False, limit=500):
            deadline = ticket.get("expires_at")
            if deadline is None or deadline > now:
                continue
            action = self.review.on_expiry
            if action == "release" and ticket.get("recommendation") is None:
                action = "reject"  # nothing to release: the model was never asked
            updated = {
                **ticket,
                "status": EXPIRED,
                "decision": {"action": action, "by": "policy:on_expiry", "at": now,
                             "note": f"not decided within {self.review.timeout:g}s"},
            }
            try:
                await self._replace(ticket, updated)
            except Conflict:
                continue  # decided or expired elsewhere meanwhile
            closed += 1
            await self.recorder.action("review_expiry", actor="policy:on_expiry", reason=updated["decision"]["note"],
                                 ticket=ticket["id"], request_id=ticket["request_id"], model=ticket["model"], decision={"action": action})
            await self._announce(DECISIONS_TOPIC, {"event": "expired", "ticket": ticket["id"]})
        return closed

    # helpers -----------------------------------------------------------------------
    def _require_pending(self, ticket: dict[str, Any]) -> None:
        if ticket["status"] != PENDING:
            decision = ticket.get("decision") or {}
            raise Conflict(
                f"ticket {ticket['id']} is already {ticket['status']} (by {decision.get('by')})",
                detail={"status": ticket["status"]},
            )

    async def _replace(self, current: dict[str, Any], updated: dict[str, Any]) -> None:
        try:
            await self.store.update(TICKETS, current["id"], updated,
                                    expect={"status": current["status"], "claimed_by": current.get("claimed_by")})
        except StaleWrite as exc:
            now = exc.current or {}
            raise Conflict(f"ticket {current['id']} changed meanwhile (now {now.get('status')}, claimed by {now.get('claimed_by')})",
                           detail={"status": now.get("status")}) from None

    async def _announce(self, topic: str, message: dict[str, Any]) -> None:
        try:
            await self.store.publish(topic, message)
        except StoreUnavailable as exc:
            log.warning("could not announce %s: %s", message.get("event"), exc)
