"""The review queue: tickets in the store, decisions from any replica, deadlines that fail closed.

A held request's ticket is stored before the client hears anything. A decision taken
on any replica is announced on the store's `decisions` topic, which wakes a client
waiting (`Prefer: wait`) on whichever replica it is connected to. A ticket not decided
within the policy's `review.timeout` is closed with `review.on_expiry`: by whichever
replica's sweep gets there first (it reads the deadlines, `gateway.review.deadlines`, not
the pending queue, which samples fill), or by the first decision or read that finds it
past its deadline (compare-and-set: once). The deadline is the deadline, whenever the
sweep runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from gateway.background import every
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.openai.completions import completion_from_text, is_completion
from gateway.policy import Review
from gateway.recorder import NullRecorder, Recorder
from gateway.review.deadlines import Deadlines
from gateway.review.retries import RetryHints, RetryIndex
from gateway.review.tickets import DECIDED, EXPIRED, PENDING, Decision, DecisionIn, Ticket
from gateway.store import Collections, StaleWrite, StoreUnavailable, Topics

log = logging.getLogger("gateway.review")

TICKETS = "tickets"
DECISIONS_TOPIC = "decisions"
CREATED_TOPIC = "tickets"
SAMPLE_BATCH_SECONDS = 1.0  # samples block nobody; batching them saves a store commit (and fsync) per sample

QueueListener = Callable[[dict[str, Any]], None]
VerdictListener = Callable[[Ticket, Decision], None]


class TicketStore(Collections, Topics, Protocol):
    """What the queue needs of the store: its collection of tickets, and topics between replicas."""


class ReviewQueue:
    def __init__(self, store: TicketStore, review: Review, recorder: Recorder | None = None,
                 on_verdict: VerdictListener | None = None) -> None:
        self.store = store
        self.review = review
        self.on_verdict = on_verdict  # reviewers' verdicts are ground truth for accuracy monitoring
        self.recorder: Recorder = recorder or NullRecorder()
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._listeners: list[QueueListener] = []
        self._closed_listeners: list[Callable[[Ticket], None]] = []  # e.g. metrics: each ticket decided or expired here
        self._sweeper: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._samples: list[Ticket] = []
        self._flusher: asyncio.Task[None] | None = None
        self.deadlines = Deadlines(store)
        self.retries = RetryIndex(window=review.retry_window, idempotency_window=review.idempotency_window)

    # lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._unsubscribe.append(self.store.subscribe(DECISIONS_TOPIC, self._on_decided))
        self._unsubscribe.append(self.store.subscribe(CREATED_TOPIC, self._on_event))
        await self._index_recent_tickets()
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

    def add_listener(self, listener: QueueListener) -> None:
        """Called with every queue event (created, claimed, decided), e.g. for live consoles."""
        self._listeners.append(listener)

    def on_closed(self, listener: Callable[[Ticket], None]) -> None:
        """Called (in memory, at once) with each ticket this replica decided or expired."""
        self._closed_listeners.append(listener)

    def _closed(self, ticket: Ticket) -> None:
        for listener in self._closed_listeners:
            try:
                listener(ticket)
            except Exception:
                log.exception("review close listener failed")

    async def pending_summary(self, limit: int = 10_000) -> dict[str, Any]:
        """For the metrics, at scrape time: pending tickets per (model, kind) with the oldest one's creation
        (one indexed read of the pending tickets, `limit`, oldest first), and each model's soonest deadline."""
        pending: dict[tuple[str, str], tuple[int, float]] = {}
        for doc in await self.store.query(TICKETS, where={"status": PENDING}, newest_first=False, limit=limit):
            key = (doc.get("model") or "-", doc.get("kind") or "-")
            count, oldest = pending.get(key, (0, float("inf")))
            pending[key] = (count + 1, min(oldest, float(doc.get("created_at") or 0)))
        return {"pending": pending, "next_expiry": await self.deadlines.soonest()}

    def remove_listener(self, listener: QueueListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # holding -----------------------------------------------------------------------
    async def add(self, ticket: Ticket) -> Ticket:
        """Store a new ticket durably (its deadline first), then announce it (with what a retry of its request would match)."""
        await self.deadlines.add(ticket)
        await self.store.insert(TICKETS, ticket.id, ticket.to_doc())
        self._note(ticket.id, ticket.caller, ticket.fingerprint, ticket.idempotency_key, ticket.created_at)
        await self._announce(CREATED_TOPIC, {"event": "created", "ticket": ticket.id, "model": ticket.model,
                                             "caller": ticket.caller, "fingerprint": ticket.fingerprint,
                                             "idempotency_key": ticket.idempotency_key, "created_at": ticket.created_at})
        return ticket

    async def twin(self, caller: str, fingerprint: str, hints: RetryHints) -> Ticket | None:
        """The held ticket a request is a retry of (see `gateway.review.retries`), or None."""
        found = self.retries.find(caller, fingerprint, hints)
        if found is None:
            return None
        try:
            return await self.get(found)
        except NotFound:
            return None

    def _note(self, ticket: str, caller: str | None, fingerprint: str | None, key: str | None, created: float | None,
              closed: bool = False) -> None:
        if caller and fingerprint and created:
            self.retries.note(ticket=ticket, caller=caller, fingerprint=fingerprint, idempotency_key=key,
                              created=created, closed=closed)

    async def _index_recent_tickets(self) -> None:
        """Tickets held within the retry windows, so a retry that reaches this replica after a restart joins them."""
        horizon = time.time() - max(self.review.retry_window, self.review.idempotency_window)
        try:
            recent = await self.store.query(TICKETS, limit=10_000, newest_first=True)
        except StoreUnavailable as exc:
            log.warning("could not read recent tickets for retries: %s", exc)
            return
        try:
            await self.deadlines.backfill(recent)
        except StoreUnavailable as exc:
            log.warning("could not add the deadlines of recent tickets: %s", exc)
        for doc in reversed(recent):
            if doc.get("kind") != "sample" and (doc.get("created_at") or 0) >= horizon:
                self._note(doc["id"], doc.get("caller"), doc.get("fingerprint"), doc.get("idempotency_key"),
                           doc.get("created_at"), closed=doc.get("status") != PENDING)

    def add_sample(self, ticket: Ticket) -> None:
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
                await self.store.insert_many(TICKETS, [t.to_doc() for t in batch])
            except StoreUnavailable as exc:
                log.error("could not store %d sampled ticket(s): %s; retrying", len(batch), exc)
                self._samples[:0] = batch
                await asyncio.sleep(1.0)
                continue
            await self._announce(CREATED_TOPIC, {"event": "created", "tickets": [t.id for t in batch], "kind": "sample"})

    async def get(self, ticket_id: str) -> Ticket:
        """The ticket as it stands; one found past its deadline is closed by the policy first."""
        doc = await self.store.get(TICKETS, ticket_id)
        if doc is None:
            raise NotFound(f"no ticket {ticket_id!r}")
        return await self._expire_if_due(Ticket.from_doc(doc), time.time())

    async def list(self, *, status: str | None = PENDING, model: str | None = None, kind: str | None = None,
                   limit: int = 100) -> list[Ticket]:
        where: dict[str, Any] = {}
        if status:
            where["status"] = status
        if model:
            where["model"] = model
        if kind:
            where["kind"] = kind
        return [Ticket.from_doc(doc) for doc in await self.store.query(TICKETS, where=where, limit=limit)]

    # reviewing ---------------------------------------------------------------------
    async def claim(self, ticket_id: str, reviewer: str) -> Ticket:
        ticket = await self.get(ticket_id)
        self._require_pending(ticket)
        now = time.time()
        holder = ticket.claimed_by_other(reviewer, now)
        if holder:
            raise Conflict(f"ticket {ticket_id} is claimed by {holder} until {ticket.claim_until:.0f}",
                           detail={"claimed_by": holder, "claim_until": ticket.claim_until})
        updated = replace(ticket, claimed_by=reviewer, claim_until=now + self.review.claim_lease)
        await self._replace(ticket, updated)
        await self._announce(CREATED_TOPIC, {"event": "claimed", "ticket": ticket_id, "by": reviewer})
        return updated

    async def release(self, ticket_id: str, reviewer: str, *, force: bool = False) -> Ticket:
        ticket = await self.get(ticket_id)
        self._require_pending(ticket)
        if ticket.claimed_by not in (None, reviewer) and not force:
            raise Conflict(f"ticket {ticket_id} is claimed by {ticket.claimed_by}, not by {reviewer}")
        updated = replace(ticket, claimed_by=None, claim_until=None)
        await self._replace(ticket, updated)
        await self._announce(CREATED_TOPIC, {"event": "released", "ticket": ticket_id, "by": reviewer})
        return updated

    async def decide(self, ticket_id: str, reviewer: str, decision_in: DecisionIn) -> Ticket:
        """Close a ticket with a reviewer's decision. Final: a second decision gets 409."""
        ticket = await self.get(ticket_id)
        self._require_pending(ticket)
        if ticket.caller == reviewer:
            raise Forbidden(f"{reviewer} made request {ticket.request_id} and cannot also review it")
        holder = ticket.claimed_by_other(reviewer, time.time())
        if holder:
            raise Conflict(f"ticket {ticket_id} is claimed by {holder}", detail={"claimed_by": holder})
        if ticket.kind in ("sample", "appeal"):
            if decision_in.verdict is None:
                raise BadRequest(f"a{'n appeal' if ticket.kind == 'appeal' else ' sampled'} ticket takes a `verdict`: "
                                 "agree or disagree (the answer was already served)")
        else:
            if decision_in.action is None:
                raise BadRequest("a held ticket takes an `action`: approve, override or reject")
            if decision_in.action == "approve" and ticket.recommendation is None:
                raise BadRequest("there is no model answer to approve (the model was not called): override or reject")
            if (decision_in.action == "override" and ticket.api == "openai" and decision_in.answer_text is None
                    and not isinstance(decision_in.response, str) and not is_completion(decision_in.response)):
                raise BadRequest("an OpenAI client asked: override with the answer's text, or a whole completion "
                                 "with `choices`", param="response")
            if decision_in.answer_text is not None and ticket.api != "openai":
                raise BadRequest("`answer_text` is for OpenAI clients; this model's answer is JSON: override with "
                                 "`response`", param="answer_text")
        built = (completion_from_text(decision_in.answer_text, model=ticket.model, path=ticket.request.path)
                 if decision_in.answer_text is not None else None)
        decision = decision_in.by(reviewer, time.time(), built=built)
        updated = ticket.closed(DECIDED, decision)
        await self._replace(ticket, updated)
        self._closed(updated)
        if self.on_verdict is not None:
            self.on_verdict(ticket, decision)
        outcome = {k: v for k, v in decision.to_doc().items() if k not in ("by", "at", "note")}
        if ticket.kind == "appeal":
            outcome["appeal"] = True
        await self.recorder.action(
            "review_decision", actor=reviewer, reason=decision.note or "(no note)",
            ticket=ticket_id, request_id=ticket.request_id, model=ticket.model, version=ticket.version, decision=outcome,
        )
        await self._announce(DECISIONS_TOPIC, {"event": "decided", "ticket": ticket_id})
        return updated

    # waiting -----------------------------------------------------------------------
    async def wait(self, ticket_id: str, timeout: float) -> Ticket | None:
        """The closed ticket, if a decision (or its deadline) comes within `timeout` seconds; else None."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters[ticket_id].append(fut)
        try:
            ticket = await self.get(ticket_id)
            if not ticket.pending:
                return ticket
            if ticket.expires_at is not None:
                timeout = min(timeout, max(0.0, ticket.expires_at - time.time()) + 0.01)
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                pass
            ticket = await self.get(ticket_id)
            return None if ticket.pending else ticket
        finally:
            waiters = self._waiters.get(ticket_id)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[ticket_id]

    def _on_decided(self, message: dict[str, Any]) -> None:
        ticket = message.get("ticket", "")
        self.retries.closed(ticket)
        for fut in self._waiters.get(ticket, ()):
            if not fut.done():
                fut.set_result(None)
        self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("event") == "created" and message.get("fingerprint"):  # held on another replica (or here)
            self._note(message["ticket"], message.get("caller"), message["fingerprint"], message.get("idempotency_key"),
                       message.get("created_at"))
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:
                log.exception("review listener failed")

    # expiry ------------------------------------------------------------------------
    async def expire_due(self, now: float | None = None) -> int:
        """Close every pending ticket past its deadline with `on_expiry` (read from the deadlines, not the queue)."""
        now = time.time() if now is None else now
        closed = 0
        for ticket_id in await self.deadlines.due(now):
            doc = await self.store.get(TICKETS, ticket_id)
            ticket = Ticket.from_doc(doc) if doc is not None else None
            if ticket is not None and (await self._expire_if_due(ticket, now)) is not ticket:
                closed += 1  # its deadline went with it (`_replace`)
            elif ticket is None or not ticket.pending:
                await self.deadlines.forget(ticket_id)  # closed elsewhere, or a ticket never stored
        return closed

    async def _expire_if_due(self, ticket: Ticket, now: float) -> Ticket:
        """`ticket` closed with the policy's `on_expiry` if it is pending past its deadline (else `ticket`)."""
        if not ticket.pending or ticket.expires_at is None or ticket.expires_at > now:
            return ticket
        action = self.review.on_expiry
        if action == "release" and ticket.recommendation is None:
            action = "reject"  # nothing to release: the model was never asked
        decision = Decision("policy:on_expiry", now, f"not decided within {self.review.timeout:g}s", action=action)
        expired = ticket.closed(EXPIRED, decision)
        try:
            await self._replace(ticket, expired)
        except Conflict:  # decided or expired elsewhere meanwhile: that is the outcome
            doc = await self.store.get(TICKETS, ticket.id)
            return Ticket.from_doc(doc) if doc else ticket
        self._closed(expired)
        await self.recorder.action("review_expiry", actor=decision.by, reason=decision.note, ticket=ticket.id,
                                   request_id=ticket.request_id, model=ticket.model, decision={"action": action})
        await self._announce(DECISIONS_TOPIC, {"event": "expired", "ticket": ticket.id})
        return expired

    # helpers -----------------------------------------------------------------------
    @staticmethod
    def _require_pending(ticket: Ticket) -> None:
        if not ticket.pending:
            by = ticket.decision.by if ticket.decision else None
            raise Conflict(f"ticket {ticket.id} is already {ticket.status} (by {by})", detail={"status": ticket.status})

    async def _replace(self, current: Ticket, updated: Ticket) -> None:
        try:
            await self.store.update(TICKETS, current.id, updated.to_doc(),
                                    expect={"status": current.status, "claimed_by": current.claimed_by})
        except StaleWrite as exc:
            now = exc.current or {}
            raise Conflict(f"ticket {current.id} changed meanwhile (now {now.get('status')}, claimed by {now.get('claimed_by')})",
                           detail={"status": now.get("status")}) from None
        if not updated.pending and current.expires_at is not None:
            await self.deadlines.forget(current.id)

    async def _announce(self, topic: str, message: dict[str, Any]) -> None:
        try:
            await self.store.publish(topic, message)
        except StoreUnavailable as exc:
            log.warning("could not announce %s: %s", message.get("event"), exc)
