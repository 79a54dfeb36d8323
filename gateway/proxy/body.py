"""Reading the client's request body from ASGI: whole (bounded) or streamed through."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.errors import BadRequest, PayloadTooLarge


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
    return None


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes (limits.max_body_bytes)")


async def read_body(receive, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes as soon as it is exceeded."""
    first, more = await first_part(receive)
    if not more:
        if len(first) > limit:
            raise too_large(limit)
        return first
    return b"".join([chunk async for chunk in stream_rest(first, receive, limit)])


async def first_part(receive) -> tuple[bytes, bool]:
    """The first body message: (bytes, whether more follows)."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    return message.get("body", b""), message.get("more_body", False)


async def stream_rest(first: bytes, receive, limit: int) -> AsyncIterator[bytes]:
    """Yield the body as it arrives, starting with `first`, up to `limit` bytes."""
    size = len(first)
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
