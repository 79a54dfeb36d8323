"""Hold or release: the stage where a human takes over from the model.

Level 4 turns a request into a human task (the model is not called). Levels 2 and 3 read
the whole answer first: level 3 holds every answer, level 2 those whose confidence is
below the threshold or unreadable. A held request becomes a ticket, stored durably with
its evidence record on disk before the client hears `202` (or, within `Prefer: wait`, the
human's decision). An answer served and sampled becomes a post-hoc ticket that blocks
nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.oversight.confidence import meets, read_confidence
from gateway.oversight.plan import AUTO, HELD, HUMAN, SAMPLED, Plan
from gateway.policy import ConfidenceSource, Review
from gateway.proxy import answers
from gateway.proxy.exchange import Exchange
from gateway.proxy.headers import client_response_headers
from gateway.proxy.prefer import parse_prefer
from gateway.proxy.stages import Recording
from gateway.upstream import UpstreamResponse
from gateway.redaction import redact_headers
from gateway.review.tickets import HeldRequest, Kind, Recommendation, Ticket, final_answer

Headers = list[tuple[bytes, bytes]]


class HoldQueue(Protocol):
    """What holding needs of the review queue."""

    async def add(self, ticket: Ticket) -> Ticket: ...

    def add_sample(self, ticket: Ticket) -> None: ...

    async def wait(self, ticket_id: str, timeout: float) -> Ticket | None: ...


class Holding:
    def __init__(self, queue: HoldQueue, recording: Recording, review: Review, *,
                 confidence: Mapping[str, ConfidenceSource], buffer_limit: int, redact: frozenset[bytes],
                 policy_version: str) -> None:
        self.queue = queue
        self.recording = recording
        self.review = review
        self.confidence = confidence
        self.buffer_limit = buffer_limit
        self.redact = redact
        self.policy_version = policy_version

    async def human_task(self, headers: Headers, ex: Exchange, plan: Plan, send) -> None:
        """Level 4: the model is not called; a human answers."""
        ex.route = HUMAN
        await self._hold(headers, ex, plan, send, kind="human", recommendation=None,
                         reason=f"level {plan.level}: the model is paused; a human decides")

    async def hold_or_release(self, headers: Headers, ex: Exchange, plan: Plan, response: UpstreamResponse, send) -> None:
        """Levels 2 and 3: the whole answer is read before anything reaches the client."""
        try:
            body = await answers.read_all(response, self.buffer_limit)
        except answers.AnswerTooLarge:
            ex.route = HELD
            await self._hold(headers, ex, plan, send, kind="hold", recommendation=None,
                             reason=f"the answer is larger than limits.max_response_buffer_bytes ({self.buffer_limit}); not kept")
            return
        out_headers = client_response_headers(response.headers, keep_length=False)
        ex.response_status, ex.response_headers, ex.response_body = response.status, out_headers, body
        recommendation = Recommendation.of(response.status, out_headers, body)
        source = self.confidence[ex.model]
        ex.confidence = read_confidence(source, response.headers, body)  # decides at level 2, informs the reviewer at 3
        if plan.hold_all:
            ex.route = HELD
            await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation,
                             reason=f"level {plan.level}: every answer is reviewed; the model's answer is a recommendation")
            return
        if meets(ex.confidence, plan.threshold):  # type: ignore[arg-type]
            ex.route = SAMPLED if plan.sampled else AUTO
            await answers.send_whole(send, ex, response.status, out_headers, body,
                                     on_complete=lambda: self.recording.record(ex, plan, headers))
            if plan.sampled:
                self.sample(ex)
            return
        ex.route = HELD
        reason = (f"confidence {ex.confidence:.4g} is below the threshold {plan.threshold:g}" if ex.confidence is not None
                  else f"confidence missing or unreadable ({source.source}); the threshold is {plan.threshold:g}")
        await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation, reason=reason)

    def sample(self, ex: Exchange) -> None:
        """A served answer picked for post-hoc review: a ticket that blocks nobody."""
        answer = Recommendation.of(ex.response_status, ex.response_headers, ex.response_body or b"", ex.truncated)
        self.queue.add_sample(self._ticket(ex, kind="sample", reason=f"sampled at level {ex.level} for post-hoc review",
                                           request=self._request(ex, []), recommendation=answer, timeout=None))

    async def _hold(self, headers: Headers, ex: Exchange, plan: Plan, send, *, kind: Kind,
                    recommendation: Recommendation | None, reason: str) -> None:
        """Store a ticket durably, then answer 202 (or the decision, if it comes within `Prefer: wait`)."""
        ticket = self._ticket(ex, kind=kind, reason=reason, request=self._request(ex, headers),
                              recommendation=recommendation, timeout=self.review.timeout)
        await self.queue.add(ticket)
        ex.ticket = ticket.id
        await self.recording.durable(await self.recording.record(ex, plan, headers))
        prefer = parse_prefer(headers)
        applied = b"respond-async" if prefer.respond_async else None
        if prefer.wait is not None and not prefer.respond_async:
            wait = min(prefer.wait, self.review.max_hold_wait)
            applied = b"wait=%d" % wait
            closed = await self.queue.wait(ticket.id, wait)
            if closed is not None:
                status, out_headers, body = final_answer(closed)
                await answers.send_whole(send, ex, status, out_headers + [(b"preference-applied", applied)], body)
                return
        await answers.send_pending(send, ex, ticket, preference=applied)

    def _ticket(self, ex: Exchange, *, kind: Kind, reason: str, request: HeldRequest,
                recommendation: Recommendation | None, timeout: float | None) -> Ticket:
        return Ticket.new(kind=kind, request_id=ex.request_id.decode(), caller=ex.caller.id,  # type: ignore[union-attr]
                          model=ex.model, version=ex.version, level=ex.level, reason=reason, request=request,
                          recommendation=recommendation, confidence=ex.confidence, timeout=timeout,
                          policy_version=self.policy_version)

    def _request(self, ex: Exchange, headers: Headers) -> HeldRequest:
        pairs = tuple((k, v) for k, v in redact_headers(headers, self.redact))
        return HeldRequest(ex.method, ex.target.decode("latin-1"), pairs, ex.request_body or b"")
