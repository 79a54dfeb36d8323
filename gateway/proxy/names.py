"""Public names and served names: a model is called one thing by clients, another by its upstream.

vLLM serves `meta-llama/Llama-3.1-8B-Instruct`; clients may call it `llama-8b`. A version
with a `served_name` gets that name in the `/v1` request body's `model` on the way in,
and its answers (whole or streamed) say the public name again on the way out, so a client
never sees a name it did not ask for. Such a version is asked for identity-coded answers,
so the names in them can be read; one that compresses regardless passes through as sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

from gateway.errors import BadRequest
from gateway.proxy.resolve import V1Request
from gateway.proxy.stages import Answer

_LINE_LIMIT = 64 * 1024  # a stream piece with no line end in this many bytes is passed on as it is


def upstream_body(body: bytes, v1: V1Request, served: str) -> bytes:
    """The request body with the served name in its `model` field."""
    if v1.doc is not None:
        return json.dumps({**v1.doc, "model": served}, ensure_ascii=False, separators=(",", ":")).encode()
    start, end = v1.model_at or (-1, -1)
    if start < 0:
        raise BadRequest("the multipart `model` field is split in the body; send it as one part before the file")
    return body[:start] + served.encode() + body[end:]


def identity_coding(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Ask the upstream for an answer whose names can be read and rewritten."""
    return [h for h in headers if h[0] != b"accept-encoding"] + [(b"accept-encoding", b"identity")]


class RenamedAnswer:
    """An upstream answer read through a rewrite of `"model": "<served>"` to `"model": "<public>"`.

    Whole answers are rewritten at once (with their new length); streamed ones line by
    line, so a name split across two reads is still found.
    """

    __slots__ = ("_inner", "status", "headers", "_pattern", "_public", "_carry", "_body", "_ended")

    def __init__(self, inner: Answer, served: str, public: str) -> None:
        self._inner = inner
        self.status = inner.status
        self._pattern = re.compile(rb'("model"\s*:\s*)"' + re.escape(json.dumps(served)[1:-1].encode()) + rb'"')
        self._public = b'\\1"' + json.dumps(public)[1:-1].encode().replace(b"\\", b"\\\\") + b'"'
        self._carry = b""
        self._ended = False
        self._body: bytes | None = None
        encoded = any(name == b"content-encoding" for name, _ in inner.headers)
        if encoded:  # compressed regardless of what was asked: passed on as sent
            self._pattern = None
            self.headers = inner.headers
        elif inner.complete:
            self._body = self._rename(inner.take_body())
            self.headers = [h for h in inner.headers if h[0] != b"content-length"]
            self.headers.append((b"content-length", b"%d" % len(self._body)))
        else:
            self.headers = [h for h in inner.headers if h[0] != b"content-length"]  # its length changes

    @property
    def complete(self) -> bool:
        return self._body is not None or self._inner.complete

    def take_body(self) -> bytes:
        if self._body is not None:
            body, self._body = self._body, b""
            return body
        return self._rename(self._inner.take_body())

    async def pipe(self, sink: Callable[[bytes], bool], drain: Callable[[], Awaitable[object]]) -> None:
        """Each renamed piece to `sink` as it is read (the rename carries a line across reads: no read callback)."""
        while chunk := await self.read_chunk():
            if not sink(chunk):
                await drain()

    async def read_chunk(self) -> bytes:
        if self._body is not None:
            body, self._body = self._body, None
            self._ended = True
            return body
        while not self._ended:
            chunk = await self._inner.read_chunk()
            if not chunk:
                self._ended = True
                rest, self._carry = self._carry, b""
                return self._rename(rest)
            if self._pattern is None:
                return chunk
            data = self._carry + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < _LINE_LIMIT:
                self._carry = data  # no line end yet: the name may go on in the next read
                continue
            cut = cut or len(data)
            self._carry = data[cut:]
            return self._rename(data[:cut])
        return b""

    def release(self) -> None:
        self._inner.release()

    def abort(self, reason: str) -> None:
        self._inner.abort(reason)

    def _rename(self, data: bytes) -> bytes:
        return self._pattern.sub(self._public, data) if self._pattern is not None and data else data
