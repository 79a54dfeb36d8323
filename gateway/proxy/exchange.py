"""One request's passage through the gateway: what each stage learned, for headers, metrics and records."""

from __future__ import annotations

import re
from time import perf_counter

from gateway.auth import Caller
from gateway.ids import request_id
from gateway.proxy.content import decode, decoded_headers
from gateway.proxy.resolve import V1Request

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id if it is a sane token, else a new one."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return value
    return request_id().encode()


class Exchange:
    __slots__ = (
        "request_id", "started", "caller", "model", "version", "level", "route", "status",
        "upstream_seconds", "disconnected", "finished", "error_type", "method", "target",
        "request_body", "response_status", "response_headers", "response_body", "confidence", "ticket", "truncated",
        "sent_start", "client_addr", "upstream_error", "api", "stream", "attached", "raised_to", "phase", "stop",
        "decoded_from", "unreadable", "v1", "span", "trace_headers", "peek",
        "waiting_seconds", "headers_at", "overhead", "usage", "first_token",
    )

    def __init__(self, request_id: bytes, started: float | None = None) -> None:
        self.request_id = request_id
        self.started = perf_counter() if started is None else started
        self.caller: Caller | None = None
        self.model = ""
        self.version = ""
        self.level = -1
        self.route = "auto"
        self.status = 0
        self.upstream_seconds = 0.0
        self.disconnected = False
        self.finished = False
        self.error_type: str | None = None
        self.method = ""
        self.target = b""
        self.request_body: bytes | None = None  # kept only when the plan captures
        self.response_status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.response_body: bytes | None = None
        self.confidence: float | None = None
        self.ticket: str | None = None
        self.truncated = False
        self.decoded_from: str | None = None  # the content codings undone to read the answer (gzip, br, ...)
        self.unreadable: str | None = None  # why the answer's content could not be decoded
        self.sent_start = False
        self.client_addr = "unknown"
        self.upstream_error: str | None = None  # connect, reset, timeout, protocol, ended
        self.api = "generic"  # "openai" on /v1 routes: errors and held answers in the OpenAI shape
        self.stream = False  # a /v1 body asked for a stream
        self.v1: V1Request | None = None  # what resolving read of a /v1 body
        self.attached = False  # a retry that joined its twin's ticket instead of asking the model again
        self.raised_to: int | None = None  # the level rose while this exchange was in flight (see inflight)
        self.phase: str | None = None  # "upstream" (waiting for the answer's head) or "streaming": interruptible
        self.stop = None  # in those phases, what interrupts it (cancel the upstream call, end the stream)
        self.waiting_seconds = 0.0  # before the headers, waited on others besides `upstream_seconds`: the rest of
        #                             the model's answer (a first chunk, a buffered body), a reviewer's decision
        self.headers_at: float | None = None  # when the answer's headers went out (perf_counter)
        self.overhead: float | None = None  # the gateway's own time to those headers (X-Gateway-Overhead-Ms)
        self.usage: tuple[int, int] | None = None  # an OpenAI answer's (input, output) tokens, from its `usage`
        self.first_token: float | None = None  # a stream: seconds from sending upstream to its first chunk
        self.span = None  # with tracing on (gateway.tracing): this exchange's span; off, always None
        self.trace_headers: list[tuple[bytes, bytes]] | None = None  # traceparent (tracestate) naming it upstream
        self.peek: bytes | None = None  # with tracing on, a whole answer not captured: read for its token usage

    def keep_answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, limit: int, *,
                    truncated: bool = False) -> None:
        """What the gateway reads of the answer: its decoded content (the client gets the bytes as sent)."""
        self.response_status, self.truncated = status, truncated
        content = decode(headers, body, limit, partial=truncated)
        if content.codings is None or content.problem is not None:
            self.response_headers, self.response_body, self.unreadable = headers, body, content.problem
            return  # unreadable: kept as sent, so an approval delivers exactly what the model answered
        self.response_headers, self.response_body, self.decoded_from = decoded_headers(headers), content.body, content.codings

    def gateway_headers(self) -> list[tuple[bytes, bytes]]:
        """Called as the answer's headers go out: what the gateway itself took to them, without upstream or human waits."""
        self.headers_at = now = perf_counter()
        self.overhead = overhead = now - self.started - self.upstream_seconds - self.waiting_seconds
        headers = [(b"x-request-id", self.request_id)]
        if self.version:
            headers.append((b"x-model-version", self.version.encode()))
        if self.level >= 0:
            headers.append((b"x-oversight-level", b"%d" % self.level))
            # Post-hoc sampling is invisible to the client: it does not change its answer, and
            # telling would let a caller learn which of its answers a human will read.
            headers.append((b"x-oversight-route", b"auto" if self.route == "sampled" else self.route.encode()))
        headers.append((b"x-gateway-overhead-ms", b"%.3f" % (overhead * 1000)))
        return headers
