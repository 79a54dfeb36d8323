"""The HTTP server's own limits: sizes and deadlines enforced while a request is read, JSON for its refusals.

uvicorn's httptools protocol reads any number of header lines of any size, waits for a
client forever, and answers a malformed request with plain text. This protocol keeps its
speed and adds, before the application sees anything (so before authentication):
- a cap on the header block (bytes, fields) and on the request line: 431 / 414;
- a deadline for the whole header block (a client trickling header lines gets 408), and
  one for the whole body once the headers are in (an upload at a byte a second is cut
  off with 408, or the connection closed if an answer already started);
- the gateway's JSON error shape, with a request id, for every refusal the server makes
  itself (a malformed request is 400 in JSON, not "Invalid HTTP request received.").
  A bad request pipelined behind good ones on the same connection is refused after they
  are answered (uvicorn's parser runs ahead of the answers: the refusal and its close used
  to go first and lose them).
Timers are armed only while a request is incomplete at the end of a read, so a request
that arrives whole costs nothing extra. The keep-alive timeout is one timer per connection
that each answer moves, where uvicorn arms a timer after every answer and cancels it on
the next request.

Each request's cycle is a `GatewayCycle`, which saves the data plane three costs: an answer
with a Content-Length leaves in one write (head and body in one TCP segment, where uvicorn
writes the head on its own); the data plane learns of a client that went away from a
callback instead of a task per request; and a stream's events can be written straight from
the upstream's read callback instead of one ASGI message each. The data plane finds the
last two on the cycle, through the `gateway.cycle` scope extension (a weak reference).
"""

from __future__ import annotations

import json
import logging
import sys
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.coalescing import CoalescingTransport
from gateway.ids import request_id as new_request_id

log = logging.getLogger("gateway.server")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}
_TYPES = {400: "bad_request", 408: "request_timeout", 414: "uri_too_long", 431: "header_fields_too_large"}


@dataclass(frozen=True, slots=True)
class ReadLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 128
    max_url_bytes: int = 16 * 1024
    header_seconds: float = 10.0
    body_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class _Refused:
    """Why a parser callback stopped the parser; `data_received` answers with it."""

    status: int
    message: str


class _Stop(Exception):
    """Stops httptools from a callback (it reports it as a parser error)."""


def protocol_with(limits: ReadLimits) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn (`http=`), with these limits."""
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {"limits": limits})


class GatewayHttpProtocol(HttpToolsProtocol):
    limits = ReadLimits()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reading = ""  # "head" or "body" while a request is incomplete
        self._head_bytes = 0
        self._head_fields = 0
        self._deadline = None
        self._refusal: _Refused | None = None  # set by a callback that stopped the parser
        self._refused_next: _Refused | None = None  # a bad request behind one still being answered: refused after it

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # a busy loop's answers leave together

    # reading ------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused_next is not None:
            return  # the parser stopped at a bad request; what follows it is not read
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            status, message = (refusal.status, refusal.message) if refusal else (400, "the request is not valid HTTP/1.1")
            log.warning("request refused while read: %s", message, extra={"client": self.client and self.client[0]})
            if self._answering_earlier():
                self._refused_next = _Refused(status, message)  # the earlier requests are answered first
                self.transport.pause_reading()
                return
            self._write_refusal(status, message)
            return
        if self._reading and self._deadline is None and not self.transport.is_closing():
            seconds = self.limits.header_seconds if self._reading == "head" else self.limits.body_seconds
            self._deadline = self.loop.call_later(seconds, self._too_slow, self._reading)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading, self._head_bytes, self._head_fields = "head", 0, 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_url_bytes:
            self._refuse(414, f"the request target is longer than {self.limits.max_url_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._head_fields += 1
        if self._head_bytes > self.limits.max_header_bytes or self._head_fields > self.limits.max_headers:
            self._refuse(431, f"the header block is larger than {self.limits.max_header_bytes} bytes or "
                              f"{self.limits.max_headers} fields (limits.max_header_bytes, limits.max_headers)")
        super().on_header(name, value)

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = _Refused(status, message)
        raise _Stop()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._reading = "body"
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            # uvicorn builds its own cycle class; its task has not run yet, so it runs as a GatewayCycle
            cycle.__class__ = GatewayCycle
            self.scope["extensions"] = {"gateway.cycle": weakref.ref(cycle)}  # weak: the cycle holds the scope

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading = ""
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, GatewayCycle) and not cycle.response_complete:
            cycle.client_gone()

    # keep-alive ------------------------------------------------------------------------------------
    _idle_until = 0.0  # loop time at which an idle connection is closed; 0 while a request is in progress
    _idle_timer = None

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive deadline moved instead of a timer armed."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            self.flow.resume_reading()
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._refused_next is not None:  # every request before the bad one is answered: now its refusal
            # after the answer's last bytes, which the cycle writes once uvicorn's send (calling this) returns
            self.loop.call_soon(self._refuse_next)
            return
        self.flow.resume_reading()
        self._idle_until = self.loop.time() + self.timeout_keep_alive
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(self._idle_until, self._idle_check)

    def _refuse_next(self) -> None:
        refused, self._refused_next = self._refused_next, None
        if refused is not None and not self.transport.is_closing():
            self._write_refusal(refused.status, refused.message)

    def _answering_earlier(self) -> bool:
        """A request read whole before the bad one is still being answered (the newest cycle is the last one read)."""
        return self._reading != "body" and self.cycle is not None and not self.cycle.response_complete

    def _unset_keepalive_if_required(self) -> None:  # uvicorn calls it when bytes arrive
        self._idle_until = 0.0

    def _idle_check(self) -> None:
        self._idle_timer = None
        if not self._idle_until or self.transport.is_closing():
            return  # busy (the next answer arms it again) or already closing
        if self.loop.time() >= self._idle_until:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_at(self._idle_until, self._idle_check)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, part: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        seconds = self.limits.header_seconds if part == "head" else self.limits.body_seconds
        message = (f"the request's {'header block' if part == 'head' else 'body'} did not arrive within {seconds:g}s "
                   f"(timeouts.client_{'header' if part == 'head' else 'body'})")
        cycle = self.cycle
        if part == "body" and cycle is not None:
            started = cycle.response_started
            cycle.disconnected = True  # the application's receive() now sees the client gone
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        self._write_refusal(408, message)

    # refusing --------------------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:  # uvicorn's own path to a plain-text 400: JSON here too
        self._write_refusal(400, "the request is not valid HTTP/1.1")

    def _write_refusal(self, status: int, message: str) -> None:
        self._disarm()
        request_id = new_request_id()
        body = json.dumps({"error": {"type": _TYPES[status], "message": message, "request_id": request_id}},
                          separators=(",", ":")).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body), request_id.encode()))
        self.transport.write(head + body)
        self.transport.close()


class _Collected:
    """Stands in for the transport while uvicorn writes part of an answer, so the cycle decides when it leaves."""

    __slots__ = ("transport", "data", "closed")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.transport.is_closing()


class GatewayCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, with an answer's head held for its body and a disconnect callback."""

    _head: bytes | None = None  # an answer's head, built and not yet written
    _on_gone = None  # what the application asked to be called when the client goes away mid-request

    def when_gone(self, callback) -> None:
        """Call `callback()` if the client disconnects before the answer is complete (None: no longer)."""
        self._on_gone = callback

    def client_gone(self) -> None:
        callback, self._on_gone = self._on_gone, None
        if callback is not None:
            callback()

    def piece_writer(self) -> tuple[Callable[[bytes], bool], Callable[[], Awaitable[None]]] | None:
        """Once a chunked answer's head is out: a function writing one piece of it now, and the wait for a full client.

        A piped stream (`UpstreamResponse.pipe`) writes each event from the upstream's read
        callback, without an ASGI message, a task wake-up or uvicorn's send; the function
        returns False when the client's buffer is full (wait for the second one). None when
        the answer is not chunked (a HEAD, a 204, a length) or the client is gone.
        """
        if not self.chunked_encoding or self.disconnected or self.scope["method"] == "HEAD":
            return None
        return self._write_piece, self.flow.drain

    def _write_piece(self, body: bytes) -> bool:
        if not body or self.disconnected or self.transport.is_closing():
            return True  # a client gone: its disconnect callback ends the answer
        self.transport.write_now(b"%x\r\n%b\r\n" % (len(body), body))
        return not self.flow.write_paused

    async def send(self, message) -> None:
        head = self._head
        if head is None and message["type"] == "http.response.start" and not self.response_started:
            await self._send_collected(message)
            return
        if head is not None:
            self._head = None
            await self._send_collected(message, head)
            return
        await super().send(message)

    async def _send_collected(self, message, head: bytes | None = None) -> None:
        transport = self.transport
        self.transport = collected = _Collected(transport)
        try:
            await super().send(message)
        finally:
            self.transport = transport
        if head is None and not self.chunked_encoding and self.expected_content_length and not self.response_complete:
            self._head = collected.data  # a body of a known length follows: the two leave together
            return
        if head is not None or collected.data:
            transport.write(head + collected.data if head is not None else collected.data)
        if collected.closed:
            transport.close()


def server_config(app, *, host: str | None = None, port: int | None = None):
    """How uvicorn runs the gateway: one worker, uvloop, httptools with the gateway's read limits, TLS from the config."""
    import uvicorn

    config = app.gateway.config
    tls = config.listen.tls
    return uvicorn.Config(
        app,
        host=host or config.listen.host,
        port=port if port is not None else config.listen.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=protocol_with(ReadLimits(max_header_bytes=config.limits.max_header_bytes,
                                      max_headers=config.limits.max_headers, max_url_bytes=config.limits.max_url_bytes,
                                      header_seconds=config.timeouts.client_header,
                                      body_seconds=config.timeouts.client_body)),
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the gateway is the edge: it adds X-Forwarded-For, it does not trust it
        log_config=None,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        timeout_graceful_shutdown=10,
    )
