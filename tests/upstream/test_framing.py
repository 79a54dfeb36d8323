"""The upstream client's framing, rule by rule of RFC 9112 section 6.3, against a scripted raw-socket server.

Each case is the exact bytes an upstream sends and what the client must make of them: the
body (and whether the connection may be used again), or an `UpstreamError` before any
answer is handed back, or one while the body is read.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import UpstreamError, UpstreamPool
from tests.rawhttp import RawUpstream

HEAD_OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"


async def _exchange(answer, method: bytes = b"GET", times: int = 1):
    """Send `times` requests to a server that answers each with `answer`; the (status, body) pairs, and the server."""
    server = await RawUpstream(lambda head: answer).start()
    pool = UpstreamPool(server.url, read_timeout=2.0)
    bodies = []
    try:
        for _ in range(times):
            response = await pool.request(method, b"/x", [])
            bodies.append((response.status, b"".join([c async for c in response.iter_chunks()])))
            await asyncio.sleep(0.05)  # a close or stray bytes from the server land before the next request
    finally:
        pool.close()
        await server.stop()
    return bodies, server


# -- the rules that give a body a length ------------------------------------------------------------------------
@pytest.mark.parametrize("answer, body", [
    (HEAD_OK + b"content-length: 5\r\n\r\nhello", b"hello"),  # 6.3 (6): Content-Length
    (HEAD_OK + b"content-length: 0\r\n\r\n", b""),
    (HEAD_OK + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),  # (4)
    (HEAD_OK + b"transfer-encoding: chunked\r\n\r\n0005;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
     b"hello0123456789"),  # chunk extensions, leading zeros, upper-case hex
    (HEAD_OK + b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-trailer: 1\r\n\r\n", b"ok"),  # trailers
    (HEAD_OK + b"transfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),  # chunked last: chunked
], ids=["content-length", "zero-length", "chunked", "chunk-extensions", "trailers", "coding-then-chunked"])
async def test_a_framed_body_is_read_whole_and_the_connection_kept(answer, body):
    bodies, server = await _exchange(answer, times=3)
    assert bodies == [(200, body)] * 3
    assert server.max_open == 1  # one connection served all three


@pytest.mark.parametrize("answer", [
    HEAD_OK + b"connection: close\r\n\r\nthe body ends when the connection closes",  # 6.3 (8)
    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nthe body ends when the connection closes",
    HEAD_OK + b"transfer-encoding: gzip\r\n\r\nthe body ends when the connection closes",  # (4): not chunked last
], ids=["connection-close", "http-1.0", "coding-not-chunked"])
async def test_a_close_delimited_body_ends_cleanly_at_the_close(answer):
    server = await RawUpstream(lambda head: [answer, 0.02, None]).start()
    pool = UpstreamPool(server.url, read_timeout=2.0)
    try:
        for _ in range(2):
            response = await pool.request(b"GET", b"/x", [])
            assert b"".join([c async for c in response.iter_chunks()]) == b"the body ends when the connection closes"
        assert len(server.received) == 2 and server.max_open == 1  # a new connection each time
    finally:
        pool.close()
        await server.stop()


async def test_a_close_delimited_stream_arrives_piece_by_piece():
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(5)]
    server = await RawUpstream(lambda head: [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
                                             *[x for e in events for x in (e, 0.02)], None]).start()
    pool = UpstreamPool(server.url, read_timeout=2.0)
    try:
        response = await pool.request(b"GET", b"/x", [])
        pieces = [c async for c in response.iter_chunks()]
        assert b"".join(pieces) == b"".join(events) and len(pieces) >= 3
    finally:
        pool.close()
        await server.stop()


@pytest.mark.parametrize("method, answer", [
    (b"HEAD", HEAD_OK + b"content-length: 1000\r\n\r\n"),  # 6.3 (1): a HEAD's Content-Length describes the GET
    (b"GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1000\r\netag: \"a\"\r\n\r\n"),
], ids=["head", "204", "304"])
async def test_answers_that_never_have_a_body(method, answer):
    bodies, _ = await _exchange(answer, method=method, times=2)
    assert [body for _, body in bodies] == [b"", b""]


async def test_interim_answers_are_skipped_and_their_headers_dropped():
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
              + HEAD_OK + b"content-length: 2\r\n\r\nok")
    server = await RawUpstream(lambda head: answer).start()
    pool = UpstreamPool(server.url)
    try:
        response = await pool.request(b"POST", b"/x", [], b"body")
        assert response.status == 200 and b"link" not in dict(response.headers)
        assert response.take_body() == b"ok"
    finally:
        pool.close()
        await server.stop()


# -- what is refused before any answer is handed back -----------------------------------------------------------
@pytest.mark.parametrize("answer, kind", [
    (HEAD_OK + b"transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "protocol"),  # (3)
    (HEAD_OK + b"content-length: 5\r\ncontent-length: 6\r\n\r\nhello!", "protocol"),  # (5): several lengths
    (HEAD_OK + b"content-length: 5, 6\r\n\r\nhello!", "protocol"),
    (HEAD_OK + b"content-length: abc\r\n\r\nhello", "protocol"),  # (5): invalid
    (HEAD_OK + b"content-length: -1\r\n\r\nhello", "protocol"),
    (HEAD_OK + b"transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "protocol"),  # a bad chunk size
    (HEAD_OK + b"transfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n", "protocol"),  # overflowing
    (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", "protocol"),
    (HEAD_OK + b"x-big: " + b"a" * 70_000 + b"\r\ncontent-length: 0\r\n\r\n", "protocol"),  # header block over the cap
    (b"this is not HTTP\r\n\r\n", "protocol"),
    (b"HTTP/1.1 200 OK\r\ncontent-le", "reset"),  # closed inside the head
], ids=["te-and-cl", "two-lengths", "length-list", "length-not-a-number", "negative-length", "bad-chunk-size",
        "overflowing-chunk-size", "101", "header-block-too-large", "not-http", "closed-in-head"])
async def test_a_broken_answer_is_an_error_before_it_is_handed_back(answer, kind):
    server = await RawUpstream(lambda head: [answer, 0.02, None]).start()
    pool = UpstreamPool(server.url, read_timeout=2.0)
    try:
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/x", [])
        assert caught.value.kind == kind, caught.value
        assert not pool._idle
    finally:
        pool.close()
        await server.stop()


# -- what breaks after the answer was handed back ---------------------------------------------------------------
@pytest.mark.parametrize("pieces, kind", [
    ([HEAD_OK + b"content-length: 100\r\n\r\nonly part", 0.05], "reset"),  # shorter than its length, then closed
    ([HEAD_OK + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", 0.05], "reset"),  # no last chunk
    ([HEAD_OK + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", 0.05, b"zz\r\nxx\r\n", 0.05], "protocol"),
], ids=["short-content-length", "chunked-without-last-chunk", "bad-chunk-later"])
async def test_a_body_that_breaks_after_its_head_raises_while_read(pieces, kind):
    server = await RawUpstream(lambda head: [*pieces, None]).start()
    pool = UpstreamPool(server.url, read_timeout=2.0)
    try:
        response = await pool.request(b"GET", b"/x", [])
        with pytest.raises(UpstreamError) as caught:
            async for _ in response.iter_chunks():
                pass
        assert caught.value.kind == kind
        assert not pool._idle
    finally:
        pool.close()
        await server.stop()


# -- connections that cannot be trusted again -------------------------------------------------------------------
async def test_bytes_after_a_complete_answer_retire_its_connection():
    bodies, server = await _exchange(HEAD_OK + b"content-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforged",
                                     times=2)
    assert bodies == [(200, b"ok"), (200, b"ok")]  # the forged second answer never answers the next request
    assert len(server.received) == 2


async def test_bytes_on_an_idle_connection_retire_it():
    forged = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"
    bodies, server = await _exchange([HEAD_OK + b"content-length: 2\r\n\r\nok", 0.01, forged], times=3)
    assert bodies == [(200, b"ok")] * 3  # each next request found the connection retired and opened a new one
    assert len(server.received) == 3
