"""Sending answers to the client over ASGI: passed through, buffered, held (202), or decided.

Small answers that are complete when their headers arrive go out as one message; the
rest stream chunk by chunk. An answer that must be recorded is recorded before the
client can hold it whole: whole answers are recorded before they start; a streamed one
keeps back the piece that completes it — the last bytes of a Content-Length body, an
OpenAI stream's `data: [DONE]`, else the end of the message — until its record is in the
operating system. If recording fails, that piece is never sent, and no client can take
what it got for a complete answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING

from gateway.errors import error_body
from gateway.openai.errors import NOT_RETRIED, openai_error_body
from gateway.proxy.exchange import Exchange
from gateway.proxy.headers import client_response_headers, header_value
from gateway.proxy.inflight import STREAMING, UPSTREAM
from gateway.upstream import UpstreamError
from gateway.proxy.stages import Answer, PieceWriter
from gateway.proxy.usage import usage_of

if TYPE_CHECKING:
    from gateway.review.tickets import Ticket

_JSON = (b"content-type", b"application/json")
_DONE = b"data: [DONE]"
_NO_LENGTH = (204, 304)  # RFC 9110: a 204 has no Content-Length, a 304's is not the body's; never relayed


class AnswerTooLarge(Exception):
    pass


class Interrupted(Exception):
    """The level rose before the answer started: plan it again, with the bytes already read (`whole`: all of them)."""

    def __init__(self, read: bytes, whole: bool) -> None:
        super().__init__("the oversight level rose before the answer started")
        self.read = read
        self.whole = whole


async def relay(response: Answer, ex: Exchange, send, *, capture: bool, capture_limit: int,
                recorded: bool, on_complete: Callable[[], Awaitable[object]], pieces: PieceWriter | None = None) -> None:
    """Pass the upstream answer through, keeping a copy when `capture` (up to `capture_limit` bytes).

    `pieces` (the server's, when it offers one) gives a function that writes one piece of a
    chunked answer to the client at once: the stream is then piped, each event written from
    the upstream's read callback (the piece that completes a recorded one still held back).
    """
    ex.status = ex.response_status = response.status
    headers = client_response_headers(response.headers, keep_length=response.status not in _NO_LENGTH)
    counted = ex.api == "openai" and response.status < 400  # tokens from the answer's `usage`
    if response.complete:
        body = response.take_body()
        if counted:
            ex.usage = usage_of(body)
        if capture:
            ex.keep_answer(response.status, headers, body, capture_limit)
        elif ex.span is not None:
            ex.peek = body  # traced: its token usage is read after it is sent
        await on_complete()  # recorded before the client sees any of it
        _check_level(ex, body, whole=True)
        ex.sent_start = True
        ex.finished = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers + ex.gateway_headers()})
        await send({"type": "http.response.body", "body": body})
        return
    seen = _Seen(capture_limit if capture else -1)
    passing = _Passing(seen, _completing_piece(headers, ex) if recorded else None)
    # Until its first bytes come, the exchange still waits on the model: a pause ends the wait, the answer is
    # planned again (a human answers); a raise to 3 lets it come and holds it (`_check_level`).
    ex.phase, ex.stop = UPSTREAM, lambda: response.abort("the model was paused (level 4) before this answer started")
    try:
        waited = perf_counter()
        try:
            first = await response.read_chunk()  # an answer broken from its first bytes is a 502, not a broken 200
        except UpstreamError:
            if ex.raised_to is None or ex.sent_start:
                raise
            raise Interrupted(b"", False) from None  # stopped by the pause above
        ex.phase, ex.stop = STREAMING, lambda: response.abort("the oversight level rose while this answer streamed")
        first_wait = perf_counter() - waited
        ex.waiting_seconds += first_wait  # waiting for the first chunk is the upstream's time, not the gateway's
        if ex.stream and counted:
            ex.first_token = ex.upstream_seconds + first_wait
        _check_level(ex, first, whole=response.complete and not first)
        ex.sent_start = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers + ex.gateway_headers()})
        if first:
            writer = pieces() if pieces is not None else None
            chunk = first
            while chunk:
                if out := passing.split(chunk):
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if writer is not None:
                    write, drain = writer
                    await response.pipe(passing.sink(write), drain)
                    break
                chunk = await response.read_chunk()
    finally:
        ex.phase = ex.stop = None
        response.release()
        if capture:
            ex.keep_answer(response.status, headers, b"".join(seen.kept), capture_limit, truncated=seen.size > capture_limit)
    if counted and seen.latest:
        before, latest = seen.before, seen.latest
        ex.usage = usage_of(latest) or (usage_of(before[-4096:] + latest) if before else None)
    await on_complete()
    ex.finished = True
    await send({"type": "http.response.body", "body": passing.held})


class _Passing:
    """A streamed answer's pieces on their way to the client: each seen, and the completing piece held back.

    `last` (see `_completing_piece`) splits off what completes a recorded answer; from there
    on everything is held, and sent once the record is in the operating system.
    """

    __slots__ = ("seen", "last", "sent", "held")

    def __init__(self, seen: "_Seen", last: Callable[[bytes, int], tuple[bytes, bytes]] | None) -> None:
        self.seen = seen
        self.last = last
        self.sent = 0
        self.held = b""

    def split(self, piece: bytes) -> bytes:
        """What of `piece` may go to the client now."""
        self.seen(piece)
        if self.held:
            self.held += piece
            return b""
        if self.last is not None:
            piece, self.held = self.last(piece, self.sent)
        self.sent += len(piece)
        return piece

    def sink(self, write: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
        """A sink for `Answer.pipe`: each piece split, and what may go now written."""

        seen = self.seen
        if self.last is None:  # nothing is held back: each piece is seen and written

            def sink(piece: bytes) -> bool:
                seen(piece)
                return write(piece)
        else:

            def sink(piece: bytes) -> bool:
                out = self.split(piece)
                return write(out) if out else True

        return sink


class _Seen:
    """What a streamed answer keeps of the pieces it passes on: a copy up to `limit` bytes, and the last two (usage)."""

    __slots__ = ("kept", "size", "limit", "before", "latest")

    def __init__(self, limit: int) -> None:
        self.kept: list[bytes] = []
        self.size = 0
        self.limit = limit  # -1: no copy
        self.before = self.latest = b""  # references, no copies

    def __call__(self, piece: bytes) -> None:
        self.before, self.latest = self.latest, piece
        if self.size <= self.limit:
            self.kept.append(piece)
            self.size += len(piece)


def _check_level(ex: Exchange, read: bytes, *, whole: bool) -> None:
    """The last moment before an answer starts: a level raised meanwhile means plan it again."""
    if ex.raised_to is not None:
        raise Interrupted(read, whole)


def _completing_piece(headers: list[tuple[bytes, bytes]], ex: Exchange) -> Callable[[bytes, int], tuple[bytes, bytes]] | None:
    """How to split off the piece that completes this answer: (what to send now, what to keep back)."""
    length = header_value(headers, b"content-length")
    if length is not None and length.isdigit():
        total = int(length)
        return lambda chunk, sent: (chunk[:-1], chunk[-1:]) if sent + len(chunk) >= total else (chunk, b"")
    content_type = header_value(headers, b"content-type") or b""
    if ex.api == "openai" and content_type.startswith(b"text/event-stream"):
        def before_done(chunk: bytes, sent: int) -> tuple[bytes, bytes]:
            at = chunk.find(_DONE)
            return (chunk, b"") if at < 0 else (chunk[:at], chunk[at:])
        return before_done
    return None  # chunked or close-delimited: the end of the message is the last piece, sent after the record


async def read_all(response: Answer, limit: int, read: bytes = b"") -> bytes:
    """The whole upstream answer (after the `read` bytes already taken), for holding; `AnswerTooLarge` past `limit`."""
    if response.complete and not read:
        return response.take_body()
    parts: list[bytes] = [read] if read else []
    size = len(read)
    try:
        while chunk := await response.read_chunk():
            size += len(chunk)
            if size > limit:
                raise AnswerTooLarge()
            parts.append(chunk)
    finally:
        response.release()
    return b"".join(parts)


async def send_whole(send, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                     on_complete: Callable[[], Awaitable[object]] | None = None, *, interruptible: bool = False) -> None:
    """One complete answer with its length, and the gateway's headers; `on_complete` runs before it starts.

    `interruptible`: a model's answer, which a level raised meanwhile must not let out (`Interrupted`).
    """
    ex.status = status
    headers = [h for h in headers if h[0] != b"content-length"]
    headers.append((b"content-length", b"%d" % len(body)))
    if on_complete is not None:
        await on_complete()
    if interruptible:
        _check_level(ex, body, whole=True)
    ex.sent_start = True
    await send({"type": "http.response.start", "status": status, "headers": headers + ex.gateway_headers()})
    ex.finished = True
    await send({"type": "http.response.body", "body": body})


async def send_error(send, ex: Exchange, status: int, type: str, message: str, detail: dict | None = None, *,
                     param: str | None = None, code: str | None = None) -> None:
    """The JSON error shape: the OpenAI one on `/v1` routes, the gateway's own elsewhere."""
    ex.error_type = type
    headers = [_JSON]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="gateway"'))
    rid = ex.request_id.decode()
    if ex.api == "openai":
        if type in NOT_RETRIED:
            headers.append((b"x-should-retry", b"false"))
        body = openai_error_body(status, type, message, request_id=rid, param=param, code=code, detail=detail)
    else:
        body = error_body(type, message, rid, detail)
    await send_whole(send, ex, status, headers, body)


async def send_pending(send, ex: Exchange, ticket: "Ticket", *, preference: bytes | None) -> None:
    """202 Accepted: the answer waits for a human; `Location` says where it will be."""
    status_url = f"/v1/decisions/{ticket.id}"
    body = json.dumps({
        "ticket": ticket.id, "status": "pending", "status_url": status_url, "reason": ticket.reason,
        "request_id": ticket.request_id, "expires_at": ticket.expires_at,
    }).encode()
    headers = [_JSON, (b"location", status_url.encode()), (b"retry-after", b"5")]
    if preference:
        headers.append((b"preference-applied", preference))
    await send_whole(send, ex, 202, headers, body)
