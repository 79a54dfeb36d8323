"""The upstream client on its own: keep-alive, retries, flow control, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from gateway.upstream import UpstreamError, UpstreamPool
from tests.proxy.echo import EchoUpstream
from tests.rawhttp import RawUpstream
from tests.support import eventually


async def _value(value):
    return value


@pytest.fixture
async def echo():
    upstream = await EchoUpstream().start()
    yield upstream
    await upstream.stop()


async def _json(pool: UpstreamPool, method: bytes, target: bytes, body=b"", headers=None) -> tuple[int, dict]:
    response = await pool.request(method, target, headers or [], body)
    data = b"".join([chunk async for chunk in response.iter_chunks()])
    return response.status, json.loads(data)


async def test_connections_are_kept_alive_and_reused(echo):
    pool = UpstreamPool(echo.url)
    for i in range(5):
        status, seen = await _json(pool, b"POST", b"/echo?i=%d" % i, b"hello")
        assert status == 200 and seen["query"] == f"i={i}" and seen["body_length"] == 5
    assert echo.connections == 1
    pool.close()


async def test_the_base_path_prefixes_every_target(echo):
    pool = UpstreamPool(echo.url + "/api/v2/")
    _, seen = await _json(pool, b"GET", b"/x?y=1")
    assert (seen["path"], seen["query"]) == ("/api/v2/x", "y=1")
    pool.close()


async def test_a_stale_idle_connection_is_replaced_transparently(echo):
    pool = UpstreamPool(echo.url)
    await _json(pool, b"GET", b"/echo")
    echo.drop_connections()  # the upstream closes the idle connection behind the pool's back
    await eventually(lambda: _value(all(conn.closed for conn in pool._idle)))
    status, _ = await _json(pool, b"GET", b"/echo")
    assert status == 200 and echo.connections == 2
    pool.close()


async def test_a_request_racing_an_idle_close_is_retried_once(echo):
    pool = UpstreamPool(echo.url)
    await _json(pool, b"GET", b"/echo")
    (conn,) = pool._idle
    conn.closed = False  # the pool has not yet noticed: the close arrives as the request is sent
    echo.drop_connections()
    status, seen = await _json(pool, b"POST", b"/echo", b"replayable")
    assert status == 200 and seen["body_length"] == 10
    pool.close()


async def test_streamed_request_bodies_are_sent_chunked(echo):
    pool = UpstreamPool(echo.url)

    async def body():
        for i in range(10):
            yield bytes([i]) * 1000

    _, seen = await _json(pool, b"POST", b"/echo", body())
    expected = b"".join(bytes([i]) * 1000 for i in range(10))
    assert seen["body_length"] == 10_000
    assert seen["body_sha256"] == hashlib.sha256(expected).hexdigest()
    assert ("transfer-encoding", "chunked") in [tuple(h) for h in seen["headers"]]
    pool.close()


async def test_a_large_answer_streams_with_bounded_buffering(echo):
    pool = UpstreamPool(echo.url)
    response = await pool.request(b"GET", b"/big?size=20000000", [])
    assert not response.complete
    await eventually(lambda: _value(response._conn.reading_paused))  # nothing read: the client stops reading the socket
    assert response._conn.buffered <= 512 * 1024
    total = 0
    async for chunk in response.iter_chunks():
        total += len(chunk)
    assert total == 20_000_000
    status, _ = await _json(pool, b"GET", b"/echo")  # and the connection is clean for reuse
    assert status == 200 and echo.connections == 1
    pool.close()


async def test_head_requests_do_not_wait_for_a_body(echo):
    pool = UpstreamPool(echo.url)
    response = await asyncio.wait_for(pool.request(b"HEAD", b"/echo", []), 2)
    assert response.status == 200 and response.complete and response.take_body() == b""
    pool.close()


async def test_refused_reset_and_timeout_are_told_apart(echo):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(UpstreamError) as refused:
        await UpstreamPool(f"http://127.0.0.1:{closed_port}").request(b"GET", b"/", [])
    assert refused.value.kind == "connect"
    with pytest.raises(UpstreamError) as reset:
        await UpstreamPool(echo.url).request(b"GET", b"/reset", [])
    assert reset.value.kind == "reset"
    with pytest.raises(UpstreamError) as slow:
        await UpstreamPool(echo.url, read_timeout=0.2).request(b"GET", b"/hang", [])
    assert slow.value.kind == "timeout"
    response = await UpstreamPool(echo.url).request(b"GET", b"/truncate", [])
    with pytest.raises(UpstreamError) as broke:
        async for _ in response.iter_chunks():
            pass
    assert broke.value.kind == "reset"


async def test_cancelling_a_request_closes_its_connection(echo):
    pool = UpstreamPool(echo.url)
    task = asyncio.create_task(pool.request(b"GET", b"/hang", []))
    await eventually(lambda: _value(any(seen.path == "/hang" for seen in echo.requests)))  # it reached the upstream
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if echo.closed_early:
            break
        await asyncio.sleep(0.02)
    assert echo.closed_early == 1
    assert not pool._idle


# the read timeout: one deadline per wait, moved by every wait --------------------------------
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_EVENT = b"data: {}\n\n"
_PIECE = b"%x\r\n%s\r\n" % (len(_EVENT), _EVENT)


def _trickle(gaps: list[float], end: bool = True) -> list:
    """A chunked stream: its head, then one event after each gap, then its end (or a stall)."""
    pieces: list = [_STREAM_HEAD]
    for gap in gaps:
        pieces += [gap, _PIECE]
    return pieces + ([b"0\r\n\r\n"] if end else [30.0])


async def _pieces(response, how: str, seen: list[float]) -> bytes:
    """The rest of an answer's body, read chunk by chunk or piped; the loop time of each piece in `seen`."""
    loop, got = asyncio.get_running_loop(), []

    def sink(piece: bytes) -> bool:
        got.append(piece)
        seen.append(loop.time())
        return True

    if how == "piped":
        await response.pipe(sink, asyncio.sleep)
    else:
        while piece := await response.read_chunk():
            sink(piece)
    return b"".join(got)


@pytest.mark.parametrize("how", ["read", "piped"])
async def test_a_stream_slower_in_total_than_the_read_timeout_is_not_cut(how):
    upstream = await RawUpstream(lambda head: _trickle([0.2] * 8)).start()  # 1.6 s in all, 0.2 s apart
    pool = UpstreamPool(upstream.url, read_timeout=0.5)
    try:
        response = await pool.request(b"GET", b"/stream", [])
        body = await _pieces(response, how, [])
        assert body.count(b"data: ") == 8
    finally:
        pool.close()
        await upstream.stop()


@pytest.mark.parametrize("how", ["read", "piped"])
async def test_a_stream_that_stalls_mid_way_times_out_after_the_read_timeout(how):
    upstream = await RawUpstream(lambda head: _trickle([0.05, 0.3, 0.3], end=False)).start()
    pool = UpstreamPool(upstream.url, read_timeout=0.5)
    loop = asyncio.get_running_loop()
    try:
        response = await pool.request(b"GET", b"/stream", [])
        seen: list[float] = []
        with pytest.raises(UpstreamError) as stalled:
            await _pieces(response, how, seen)
        assert stalled.value.kind == "timeout" and len(seen) == 3
        assert 0.45 <= loop.time() - seen[-1] <= 1.5  # counted from the last event, not from the first wait
    finally:
        pool.close()
        await upstream.stop()


# piping: each piece handed on from the read callback ----------------------------------------
def _numbered(count: int) -> list:
    events = [b"data: %d\n\n" % n for n in range(count)]
    return [_STREAM_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"]


async def test_a_piped_stream_reaches_its_sink_whole_and_in_order_and_its_connection_is_reused():
    upstream = await RawUpstream(lambda head: _numbered(20_000)).start()  # about 250 KB in one write
    pool = UpstreamPool(upstream.url)
    try:
        response = await pool.request(b"GET", b"/stream", [])
        body = await _pieces(response, "piped", [])
        assert body == b"".join(b"data: %d\n\n" % n for n in range(20_000))
        again = await pool.request(b"GET", b"/stream", [])
        assert (await _pieces(again, "piped", [])).count(b"data: ") == 20_000
        assert upstream.max_open == 1  # the same connection both times: piping left it clean
    finally:
        pool.close()
        await upstream.stop()


async def test_a_full_sink_stops_the_reading_until_it_drains(echo):
    pool = UpstreamPool(echo.url)
    drained, waiting = asyncio.Event(), asyncio.Event()
    got = []

    def sink(piece: bytes) -> bool:
        got.append(len(piece))
        return len(got) > 1  # the first piece fills the client

    async def drain() -> None:
        waiting.set()
        await drained.wait()

    try:
        response = await pool.request(b"GET", b"/big?size=20000000", [])
        piping = asyncio.create_task(response.pipe(sink, drain))
        await asyncio.wait_for(waiting.wait(), 10)
        await eventually(lambda: _value(response._conn.reading_paused))  # the socket is no longer read
        await asyncio.sleep(0.2)
        assert response._conn.buffered <= 512 * 1024 and sum(got) <= 512 * 1024  # nothing piles up meanwhile
        drained.set()
        await piping
        assert sum(got) == 20_000_000  # every byte, once
        status, _ = await _json(pool, b"GET", b"/echo")
        assert status == 200 and echo.connections == 1
    finally:
        pool.close()


async def test_an_answer_ended_while_piped_raises_in_the_pipe(echo):
    pool = UpstreamPool(echo.url)
    try:
        response = await pool.request(b"GET", b"/gated-stream", [])
        got = []
        piping = asyncio.create_task(response.pipe(lambda piece: got.append(piece) or True, asyncio.sleep))
        await eventually(lambda: _value(bool(got)))
        response.abort("the oversight level rose while this answer streamed")
        with pytest.raises(UpstreamError) as ended:
            await piping
        assert ended.value.kind == "ended" and b"first" in got[0] and len(got) == 1
    finally:
        echo.gate.set()
        pool.close()


async def test_an_abandoned_stream_s_connection_is_replaced_before_the_next_request(echo):
    pool = UpstreamPool(echo.url)
    try:
        response = await pool.request(b"GET", b"/gated-stream", [])
        assert b"first" in await response.read_chunk()
        response.release()  # the client went away mid-stream: this connection must close
        await eventually(lambda: _value(echo.connections == 2))  # a replacement, opened before anyone asks
        status, seen = await _json(pool, b"POST", b"/echo", b"next")
        assert status == 200 and seen["body_length"] == 4
        assert echo.connections == 2  # the next request went out on the replacement: no connect on its path
    finally:
        echo.gate.set()
        pool.close()


async def test_an_answer_read_to_its_end_opens_no_extra_connection(echo):
    pool = UpstreamPool(echo.url)
    try:
        for _ in range(3):
            await _json(pool, b"POST", b"/echo", b"x")
        await asyncio.sleep(0.1)
        assert echo.connections == 1
    finally:
        pool.close()
