"""Hold or release: the stage where a human takes over from the model.

Level 4 turns a request into a human task (the model is not called). Levels 2 and 3 read
the whole answer first: level 3 holds every answer, level 2 those whose confidence is
below the threshold or unreadable. A held request becomes a ticket, stored durably with
its evidence record on disk before the client hears anything. A retry of a held request
joins its ticket (`gateway.review.retries`) instead of asking the model again.

Then the client waits for the human, as it asked or as the policy says:
- `Prefer: respond-async`: 202 with the ticket at once; `Prefer: wait=N`: up to N seconds
  (capped by `review.max_hold_wait`), then 202;
- no `Prefer` (clients that do not know the gateway): up to the model's `hold_wait`. An
  OpenAI client then gets the decided answer in the OpenAI shape or, if no decision came
  in time, a 423 error naming the ticket; a stream stays open with SSE comment lines
  while it waits and carries the decided answer as ordinary chunks (or an error event).
  A generic client gets the decided answer, or 202.
An answer served and sampled becomes a post-hoc ticket that blocks nobody.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from time import perf_counter
from typing import Protocol

from gateway.openai.completions import error_event, waiting_comment
from gateway.openai.errors import openai_error, openai_error_body
from gateway.oversight.confidence import meets, read_confidence
from gateway.oversight.plan import AUTO, HELD, HUMAN, SAMPLED, Plan
from gateway.policy import ConfidenceSource, EffectiveHoldWait, Review
from gateway.proxy import answers
from gateway.proxy.exchange import Exchange
from gateway.proxy.headers import client_response_headers
from gateway.proxy.outcome import answer_for, stream_for
from gateway.proxy.prefer import Preferences, parse_prefer
from gateway.proxy.stages import Answer, Planning, Recording
from gateway.proxy.usage import usage_of
from gateway.redaction import redact_headers
from gateway.review.retries import RetryHints, fingerprint
from gateway.review.tickets import HeldRequest, Kind, Recommendation, Ticket
from gateway.tracing import traceparent_of

Headers = list[tuple[bytes, bytes]]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class HoldQueue(Protocol):
    """What holding needs of the review queue."""

    async def add(self, ticket: Ticket) -> Ticket: ...

    def add_sample(self, ticket: Ticket) -> None: ...

    async def wait(self, ticket_id: str, timeout: float) -> Ticket | None: ...

    async def twin(self, caller: str, fingerprint: str, hints: RetryHints) -> Ticket | None: ...


class BlockingChecks(Protocol):
    """A model's output check, when its policy makes it blocking (`gateway.incidents.moderation`)."""

    def blocks(self, model: str) -> bool: ...

    async def before_release(self, ex: Exchange) -> tuple[bool | None, str]: ...


class Holding:
    def __init__(self, queue: HoldQueue, recording: Recording, planner: Planning, review: Review, *,
                 confidence: Mapping[str, ConfidenceSource], waits: Mapping[str, EffectiveHoldWait], buffer_limit: int,
                 redact: frozenset[bytes], policy_version: str, checks: BlockingChecks | None = None) -> None:
        self.queue = queue
        self.checks = checks  # a blocking output check holds a flagged (or unchecked) answer instead of releasing it
        self.recording = recording
        self.planner = planner  # to plan again when a level rises under an exchange in flight
        self.review = review
        self.confidence = confidence
        self.waits = waits
        self.buffer_limit = buffer_limit
        self.redact = redact
        self.policy_version = policy_version

    # retries -------------------------------------------------------------------------------
    async def join_twin(self, headers: Headers, ex: Exchange, plan: Plan, send) -> bool:
        """A retry of a held request waits on its ticket (the model is not asked again); False if it is none."""
        hints = RetryHints.of(headers)
        twin = await self.queue.twin(ex.caller.id, self._fingerprint(ex), hints)  # type: ignore[union-attr]
        if twin is None:
            return False
        ex.route, ex.ticket, ex.attached = (HUMAN if twin.kind == "human" else HELD), twin.id, True
        await self.recording.durable(await self.recording.record(ex, plan, headers))
        await self._deliver(headers, ex, twin, send)
        return True

    # holding -------------------------------------------------------------------------------
    async def human_task(self, headers: Headers, ex: Exchange, plan: Plan, send) -> None:
        """Level 4: the model is not called; a human answers."""
        ex.route = HUMAN
        await self._hold(headers, ex, plan, send, kind="human", recommendation=None,
                         reason=f"level {plan.level}: the model is paused; a human decides")

    async def hold_or_release(self, headers: Headers, ex: Exchange, plan: Plan, response: Answer, send,
                              read: bytes = b"") -> None:
        """Levels 2 and 3: the whole answer is read before anything reaches the client."""
        waited = perf_counter()
        try:
            body = await answers.read_all(response, self.buffer_limit, read)
        except answers.AnswerTooLarge:
            ex.waiting_seconds += perf_counter() - waited
            ex.route = HELD
            await self._hold(headers, ex, plan, send, kind="hold", recommendation=None,
                             reason=f"the answer is larger than limits.max_response_buffer_bytes ({self.buffer_limit}); not kept")
            return
        ex.waiting_seconds += perf_counter() - waited  # reading the model's whole answer is the upstream's time
        await self._judge(headers, ex, plan, response, body, send)

    async def raised(self, headers: Headers, ex: Exchange, response: Answer | None,
                     stopped: answers.Interrupted | None, send) -> None:
        """The level rose while this exchange was in flight: what is left of it is planned again at the new level."""
        level, ex.raised_to = ex.raised_to, None
        ex.level = level  # type: ignore[assignment]
        plan = self.planner.plan(ex.model, ex.level)
        if not plan.call_model:  # paused: whatever the model said is not served; a human answers
            if response is not None:
                response.abort("the model was paused (level 4) before this answer started")
            await self.human_task(headers, ex, plan, send)
        elif stopped is not None and stopped.whole:
            await self._judge(headers, ex, plan, response, stopped.read, send)  # type: ignore[arg-type]
        else:
            await self.hold_or_release(headers, ex, plan, response, send,  # type: ignore[arg-type]
                                       stopped.read if stopped else b"")

    async def _judge(self, headers: Headers, ex: Exchange, plan: Plan, response: Answer, body: bytes,
                     send) -> None:
        """Hold the whole answer (level 3, or below the threshold at level 2), or release it."""
        out_headers = client_response_headers(response.headers, keep_length=False)
        ex.keep_answer(response.status, out_headers, body, self.buffer_limit)  # what is read is the decoded content
        if ex.api == "openai" and response.status < 400 and ex.response_body:
            ex.usage = usage_of(ex.response_body)  # the model's tokens, whatever a reviewer decides
        recommendation = Recommendation.of(response.status, ex.response_headers, ex.response_body or b"")
        source = self.confidence[ex.model]
        ex.confidence = None if ex.unreadable else read_confidence(source, response.headers, ex.response_body or b"")
        if plan.hold_all:
            ex.route = HELD
            await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation,
                             reason=f"level {plan.level}: every answer is reviewed; the model's answer is a recommendation")
            return
        if meets(ex.confidence, plan.threshold) and self.checks is not None and self.checks.blocks(ex.model):
            flagged, why = await self.checks.before_release(ex)
            if flagged is not False:  # flagged, or the classifier could not say: fail closed
                ex.route = HELD
                await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation, reason=why)
                return
        if meets(ex.confidence, plan.threshold):  # type: ignore[arg-type]
            ex.route = SAMPLED if plan.sampled else AUTO
            try:
                await answers.send_whole(send, ex, response.status, out_headers, body, interruptible=True,
                                         on_complete=lambda: self.recording.record(ex, plan, headers))
            except answers.Interrupted as stopped:  # raised while this answer was judged: judged again
                await self.raised(headers, ex, response, stopped, send)
                return
            if plan.sampled:
                self.sample(ex)
            return
        ex.route = HELD
        reason = (f"confidence {ex.confidence:.4g} is below the threshold {plan.threshold:g}" if ex.confidence is not None
                  else f"confidence unreadable: {ex.unreadable}; the threshold is {plan.threshold:g}" if ex.unreadable
                  else f"confidence missing or unreadable ({source.source}); the threshold is {plan.threshold:g}")
        await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation, reason=reason)

    def sample(self, ex: Exchange) -> None:
        """A served answer picked for post-hoc review: a ticket that blocks nobody."""
        answer = Recommendation.of(ex.response_status, ex.response_headers, ex.response_body or b"", ex.truncated)
        self.queue.add_sample(self._ticket(ex, [], kind="sample", reason=f"sampled at level {ex.level} for post-hoc review",
                                           recommendation=answer, timeout=None))

    async def _hold(self, headers: Headers, ex: Exchange, plan: Plan, send, *, kind: Kind,
                    recommendation: Recommendation | None, reason: str) -> None:
        """Store a ticket durably, record the exchange to disk, then let the client wait for the human."""
        ticket = self._ticket(ex, headers, kind=kind, reason=reason, recommendation=recommendation,
                              timeout=self.review.timeout)
        await self.queue.add(ticket)
        ex.ticket = ticket.id
        await self.recording.durable(await self.recording.record(ex, plan, headers))
        await self._deliver(headers, ex, ticket, send)

    # waiting for the human -------------------------------------------------------------------
    async def _deliver(self, headers: Headers, ex: Exchange, ticket: Ticket, send) -> None:
        prefer = parse_prefer(headers)
        if prefer.respond_async and ticket.pending:
            await answers.send_pending(send, ex, ticket, preference=b"respond-async")
            return
        wait, applied = self._wait(ex, prefer)
        if ex.api == "openai" and ex.stream and not prefer.respond_async:
            await self._stream_decision(ex, ticket, wait, send)
            return
        waited = perf_counter()
        closed = ticket if not ticket.pending else (await self.queue.wait(ticket.id, wait) if wait > 0 else None)
        ex.waiting_seconds += perf_counter() - waited  # a human's time, not the gateway's (X-Gateway-Overhead-Ms)
        extra = [(b"preference-applied", applied)] if applied else []
        if closed is not None:
            status, out_headers, body = answer_for(closed)
            await answers.send_whole(send, ex, status, out_headers + extra, body)
        elif ex.api == "openai" and prefer.wait is None:
            await self._send_undecided(send, ex, ticket, wait)
        else:
            await answers.send_pending(send, ex, ticket, preference=applied)

    def _wait(self, ex: Exchange, prefer: Preferences) -> tuple[float, bytes | None]:
        """How long this client waits for the decision, and the `Preference-Applied` that says so."""
        if prefer.wait is not None:
            wait = min(prefer.wait, self.review.max_hold_wait)
            return wait, b"wait=%d" % wait
        policy = self.waits[ex.model]
        return (policy.openai if ex.api == "openai" else policy.generic), None

    async def _stream_decision(self, ex: Exchange, ticket: Ticket, wait: float, send) -> None:
        """A held stream: open at once, a comment line every `keepalive` while waiting, then the decided events."""
        ex.status = 200
        ex.sent_start = True
        await send({"type": "http.response.start", "status": 200,
                    "headers": _SSE + [(b"x-ticket", ticket.id.encode())] + ex.gateway_headers()})
        deadline = time.monotonic() + wait
        closed = None if ticket.pending else ticket
        while closed is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await send({"type": "http.response.body", "body": waiting_comment(ticket.id), "more_body": True})
            closed = await self.queue.wait(ticket.id, min(remaining, self.review.keepalive))
        events = stream_for(closed) if closed is not None else error_event(self._undecided(ex, ticket, wait))
        ex.finished = True
        await send({"type": "http.response.body", "body": events})

    async def _send_undecided(self, send, ex: Exchange, ticket: Ticket, wait: float) -> None:
        """423 in the OpenAI shape: raised by the SDKs and not retried; the ticket is still decidable."""
        ex.error_type = "decision_pending"
        error = self._undecided(ex, ticket, wait)
        body = openai_error_body(423, "decision_pending", error["error"]["message"], request_id=ex.request_id.decode(),
                                 detail={k: v for k, v in error["error"].items() if k in ("ticket", "status_url", "expires_at")})
        headers = [(b"content-type", b"application/json"), (b"location", f"/v1/decisions/{ticket.id}".encode()),
                   (b"x-ticket", ticket.id.encode())]
        await answers.send_whole(send, ex, 423, headers, body)

    def _undecided(self, ex: Exchange, ticket: Ticket, wait: float) -> dict:
        status_url = f"/v1/decisions/{ticket.id}"
        message = (f"this answer is held for human review (ticket {ticket.id}) and no decision came within {wait:g}s; "
                   f"it will appear at GET {status_url}, and the same request sent again waits for it")
        return openai_error(423, "decision_pending", message, request_id=ex.request_id.decode(),
                            detail={"ticket": ticket.id, "status_url": status_url, "expires_at": ticket.expires_at})

    # tickets -----------------------------------------------------------------------------------
    def _ticket(self, ex: Exchange, headers: Headers, *, kind: Kind, reason: str, recommendation: Recommendation | None,
                timeout: float | None) -> Ticket:
        held = kind != "sample"
        return Ticket.new(kind=kind, request_id=ex.request_id.decode(), caller=ex.caller.id,  # type: ignore[union-attr]
                          model=ex.model, version=ex.version, level=ex.level, reason=reason, request=self._request(ex, headers),
                          recommendation=recommendation, confidence=ex.confidence, timeout=timeout,
                          policy_version=self.policy_version, api=ex.api, stream=ex.stream,
                          fingerprint=self._fingerprint(ex) if held else None,
                          idempotency_key=RetryHints.of(headers).idempotency_key if held else None,
                          trace=traceparent_of(ex) if ex.trace_headers is not None else None)

    def _request(self, ex: Exchange, headers: Headers) -> HeldRequest:
        pairs = tuple((k, v) for k, v in redact_headers(headers, self.redact))
        return HeldRequest(ex.method, ex.target.decode("latin-1"), pairs, ex.request_body or b"")

    @staticmethod
    def _fingerprint(ex: Exchange) -> str:
        return fingerprint(ex.caller.id, ex.method, ex.target, ex.request_body or b"")  # type: ignore[union-attr]
