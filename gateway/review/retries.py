"""Which held ticket a retry belongs to: a client that asks again joins the first ticket.

Clients retry on their own schedule (the OpenAI SDKs twice, after a timeout), and a human
decision takes longer than a timeout. A retry must not queue a second ticket or call the
model again. What counts as a retry, from the same caller (token id):

1. the same `Idempotency-Key` within `review.idempotency_window`: the same ticket, pending
   or decided (so, once decided, the same final answer). The same key with a different
   request is refused (422), as the IETF Idempotency-Key draft says;
2. without a key, a byte-identical request (method, path and query, body) while its
   twin's ticket is pending, within `review.retry_window` of the twin;
3. the same, marked as a retry by the client (`x-stainless-retry-count` of 1 or more,
   which the OpenAI SDKs send), also when the twin's ticket was decided meanwhile.

The index lives in memory on every replica, fed by the review queue's events (a ticket
created or closed on any replica), and is rebuilt from the store's recent tickets at start.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from gateway.errors import GatewayError

RETRY_COUNT = b"x-stainless-retry-count"
IDEMPOTENCY_KEY = b"idempotency-key"
MAX_KEY = 255


class IdempotencyKeyReused(GatewayError):
    status, type = 422, "idempotency_key_reused"


def fingerprint(caller: str, method: str, target: bytes, body: bytes) -> str:
    """What makes two requests the same request."""
    h = hashlib.blake2b(digest_size=16)
    for part in (caller.encode(), method.encode(), target):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RetryHints:
    """What a request says about itself: its Idempotency-Key, and whether the client marks it a retry."""

    idempotency_key: str | None
    retried: bool

    @classmethod
    def of(cls, headers: list[tuple[bytes, bytes]]) -> "RetryHints":
        key, retried = None, False
        for name, value in headers:
            if name == IDEMPOTENCY_KEY:
                key = value.decode("latin-1").strip()[:MAX_KEY] or None
            elif name == RETRY_COUNT:
                retried = value.strip().isdigit() and int(value) >= 1
        return cls(key, retried)


@dataclass(slots=True)
class _Entry:
    ticket: str
    caller: str
    fingerprint: str
    idempotency_key: str | None
    created: float
    closed: bool = False


class RetryIndex:
    def __init__(self, *, window: float, idempotency_window: float, max_entries: int = 200_000) -> None:
        self.window = window
        self.idempotency_window = idempotency_window
        self.max_entries = max_entries
        self._tickets: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._twins: dict[tuple[str, str], _Entry] = {}
        self._keys: dict[tuple[str, str], _Entry] = {}

    def note(self, *, ticket: str, caller: str, fingerprint: str | None, idempotency_key: str | None,
             created: float, closed: bool = False) -> None:
        """A held ticket exists (made here or on another replica)."""
        if fingerprint is None or ticket in self._tickets:
            return
        entry = _Entry(ticket, caller, fingerprint, idempotency_key, created, closed)
        self._tickets[ticket] = entry
        self._twins[(caller, fingerprint)] = entry
        if idempotency_key:
            self._keys[(caller, idempotency_key)] = entry
        self._forget_old(time.time())

    def closed(self, ticket: str) -> None:
        entry = self._tickets.get(ticket)
        if entry is not None:
            entry.closed = True

    def find(self, caller: str, fingerprint: str, hints: RetryHints, now: float | None = None) -> str | None:
        """The ticket this request is a retry of, if it is one."""
        now = time.time() if now is None else now
        if hints.idempotency_key:
            entry = self._keys.get((caller, hints.idempotency_key))
            if entry is None or now - entry.created > self.idempotency_window:
                return None  # a new key is a new request, whatever it looks like
            if entry.fingerprint != fingerprint:
                raise IdempotencyKeyReused("this Idempotency-Key was used for a different request; use a new key "
                                           "for a new request", param="Idempotency-Key",
                                           detail={"ticket": entry.ticket})
            return entry.ticket
        entry = self._twins.get((caller, fingerprint))
        if entry is None or now - entry.created > self.window:
            return None
        if not entry.closed or hints.retried:
            return entry.ticket
        return None

    def __len__(self) -> int:
        return len(self._tickets)

    def _forget_old(self, now: float) -> None:
        """Tickets past both windows, and the oldest beyond `max_entries`, leave the index."""
        horizon = now - max(self.window, self.idempotency_window)
        while self._tickets:
            entry = next(iter(self._tickets.values()))
            if entry.created >= horizon and len(self._tickets) <= self.max_entries:
                return
            del self._tickets[entry.ticket]
            if self._twins.get((entry.caller, entry.fingerprint)) is entry:
                del self._twins[(entry.caller, entry.fingerprint)]
            if entry.idempotency_key and self._keys.get((entry.caller, entry.idempotency_key)) is entry:
                del self._keys[(entry.caller, entry.idempotency_key)]
