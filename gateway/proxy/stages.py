"""What the data plane needs of each stage, as narrow Protocols.

The wiring (`gateway.wiring`) hands `DataPlane` one object per stage; these are the only
calls the request path makes on them, in the order it makes them:

    identify the caller -> resolve the model and version -> integrity gate -> oversight plan
    -> forward -> hold or release -> record -> observe
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.auth import Caller
    from gateway.oversight.plan import Plan
    from gateway.proxy.exchange import Exchange


class Callers(Protocol):
    """Identify the caller: the bearer token's owner (`authorize`: only if it has one of `roles`)."""

    def identify(self, authorization: bytes | str | None) -> "Caller": ...

    def authorize(self, authorization: bytes | str | None, *roles: str) -> "Caller": ...


class ServingGate(Protocol):
    """Refuse a version that may not serve (its weights are not verified)."""

    def check(self, model: str, version: str) -> None: ...


class Planning(Protocol):
    """What the effective level means for this request."""

    def plan(self, model: str, level: int) -> "Plan": ...


class Answer(Protocol):
    """What forwarding hands back: an upstream answer whose head is in and whose body is read on demand.

    `gateway.upstream.UpstreamResponse` is one; `gateway.proxy.names.RenamedAnswer` wraps one.
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    @property
    def complete(self) -> bool: ...

    def take_body(self) -> bytes: ...

    async def read_chunk(self) -> bytes: ...

    async def pipe(self, sink: Callable[[bytes], bool], drain: Callable[[], Awaitable[object]]) -> None:
        """Hand the rest of the body to `sink` piece by piece; `drain()` when it returns False (its client is full)."""

    def release(self) -> None: ...

    def abort(self, reason: str) -> None: ...


PieceWriter = Callable[[], "tuple[Callable[[bytes], bool], Callable[[], Awaitable[object]]] | None"]
"""The server's offer for a chunked answer whose head is out: a write of one piece now, and the wait for a full client."""


class Recording(Protocol):
    """Record the exchange as evidence when the plan or its route says so."""

    async def record(self, ex: "Exchange", plan: "Plan", headers: list[tuple[bytes, bytes]]) -> int | None: ...

    async def durable(self, index: int | None) -> None: ...


class Observer(Protocol):
    """Told about every finished exchange (memory only: metrics, incident signals, logs)."""

    def observe(self, ex: "Exchange") -> None: ...
