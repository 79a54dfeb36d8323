"""What an answer says: its content with the content codings undone (RFC 9110 section 8.4).

Clients ask for compressed answers (the OpenAI SDKs send `Accept-Encoding: gzip`), and the
gateway passes their choice on: the client gets the bytes it negotiated. Everything the
gateway itself reads of an answer (confidence, the reviewer's copy, evidence, samples,
fairness) is the decoded content, produced here once per exchange and only when the
answer is encoded and the plan reads it. gzip, deflate, br and zstd are understood; an
answer whose coding is unknown, corrupt or decodes past the limit is unreadable, which
oversight treats as "confidence unreadable" (held), never as the raw bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import brotli
import zstandard

_DROPPED = (b"content-encoding", b"content-length")


@dataclass(frozen=True, slots=True)
class Content:
    """An answer's content: decoded `body`, the `codings` undone (None: it was not encoded), or the `problem`."""

    body: bytes
    codings: str | None = None
    problem: str | None = None


class _TooLarge(Exception):
    pass


def codings_of(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The content codings applied, in the order they were applied (identity left out)."""
    found: list[str] = []
    for name, value in headers:
        if name == b"content-encoding":
            found += [c.strip().lower() for c in value.decode("latin-1").split(",") if c.strip()]
    return [c for c in found if c != "identity"]


def decode(headers: list[tuple[bytes, bytes]], body: bytes, limit: int, *, partial: bool = False) -> Content:
    """The decoded content of `body`, at most `limit` bytes; `partial`: the body is a truncated capture."""
    codings = codings_of(headers)
    if not codings:
        return Content(body)
    named = ", ".join(codings)
    try:
        for coding in reversed(codings):  # the last applied is the first undone
            body = _undo(coding, body, limit, partial)
    except _TooLarge:
        return Content(b"", named, f"the {named} answer decodes to more than {limit} bytes")
    except LookupError:
        return Content(b"", named, f"the answer's content coding {named!r} is not one the gateway reads")
    except (zlib.error, brotli.error, zstandard.ZstdError, EOFError) as exc:
        return Content(b"", named, f"the {named} answer cannot be decoded: {exc}")
    return Content(body, named)


def decoded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers that describe the decoded content (no Content-Encoding, no Content-Length)."""
    return [h for h in headers if h[0] not in _DROPPED]


def _undo(coding: str, data: bytes, limit: int, partial: bool) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return _zlib(zlib.decompressobj(16 + zlib.MAX_WBITS), data, limit, partial)
    if coding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send it
        wbits = zlib.MAX_WBITS if data[:1] and (data[0] & 0x0F) == 8 and int.from_bytes(data[:2], "big") % 31 == 0 \
            else -zlib.MAX_WBITS
        return _zlib(zlib.decompressobj(wbits), data, limit, partial)
    if coding == "br":
        return _brotli(data, limit, partial)
    if coding == "zstd":
        return _zstd(data, limit, partial)
    raise LookupError(coding)


def _zlib(engine, data: bytes, limit: int, partial: bool) -> bytes:
    out = engine.decompress(data, limit + 1)
    if len(out) > limit:
        raise _TooLarge()
    if not partial and not engine.eof:
        raise EOFError("the compressed stream ends early")
    return out


def _brotli(data: bytes, limit: int, partial: bool) -> bytes:
    engine = brotli.Decompressor()
    out = engine.process(data, output_buffer_limit=limit + 1)  # a bomb stops at the limit, it does not fill memory
    if len(out) > limit:
        raise _TooLarge()
    if not partial and not engine.is_finished():
        raise EOFError("the compressed stream ends early")
    return out


def _zstd(data: bytes, limit: int, partial: bool) -> bytes:
    engine = zstandard.ZstdDecompressor().decompressobj()
    out, size = [], 0
    for at in range(0, len(data), 256):  # small pieces: one piece cannot expand far past the limit
        piece = engine.decompress(data[at:at + 256])
        size += len(piece)
        if size > limit:
            raise _TooLarge()
        out.append(piece)
    if not partial and not engine.eof:
        raise EOFError("the compressed stream ends early")
    return b"".join(out)
