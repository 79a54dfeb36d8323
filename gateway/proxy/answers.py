"""Sending answers to the client over ASGI: passed through, buffered, held (202), or decided.

Small answers that are complete when their headers arrive go out as one message; the
rest stream chunk by chunk. `on_complete` runs before the answer starts (whole answers)
or before its last message (streams), so whatever must be recorded is recorded before
the client sees the end of its answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.errors import error_body
from gateway.openai.errors import NOT_RETRIED, openai_error_body
from gateway.proxy.exchange import Exchange
from gateway.proxy.headers import client_response_headers
from gateway.upstream import UpstreamResponse

if TYPE_CHECKING:
    from gateway.review.tickets import Ticket

_JSON = (b"content-type", b"application/json")


class AnswerTooLarge(Exception):
    pass


async def relay(response: UpstreamResponse, ex: Exchange, send, *, capture: bool, capture_limit: int,
                on_complete: Callable[[], Awaitable[object]], streams: set | None = None) -> None:
    """Pass the upstream answer through, keeping a copy when `capture` (up to `capture_limit` bytes)."""
    ex.status = ex.response_status = response.status
    headers = client_response_headers(response.headers, keep_length=True)
    if capture:
        ex.response_headers = headers
    start = {"type": "http.response.start", "status": response.status, "headers": headers + ex.gateway_headers()}
    if response.complete:
        body = response.take_body()
        if capture:
            ex.response_body = body
        await on_complete()  # recorded before the client sees any of it
        ex.sent_start = True
        await send(start)
        ex.finished = True
        await send({"type": "http.response.body", "body": body})
        return
    kept: list[bytes] = []
    size = 0
    if streams is not None:
        streams.add(response)
    try:
        ex.sent_start = True
        await send(start)
        while chunk := await response.read_chunk():
            if capture and size <= capture_limit:
                kept.append(chunk)
                size += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        if streams is not None:
            streams.discard(response)
        response.release()
        if capture:
            ex.response_body = b"".join(kept)
            ex.truncated = size > capture_limit
    await on_complete()
    ex.finished = True
    await send({"type": "http.response.body", "body": b""})


async def read_all(response: UpstreamResponse, limit: int) -> bytes:
    """The whole upstream answer, for holding; `AnswerTooLarge` past `limit` bytes."""
    if response.complete:
        return response.take_body()
    parts: list[bytes] = []
    size = 0
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
                     on_complete: Callable[[], Awaitable[object]] | None = None) -> None:
    """One complete answer with its length, and the gateway's headers."""
    ex.status = status
    headers = [h for h in headers if h[0] != b"content-length"]
    headers.append((b"content-length", b"%d" % len(body)))
    if on_complete is not None:
        await on_complete()
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
