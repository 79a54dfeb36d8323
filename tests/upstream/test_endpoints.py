"""Several endpoints per version: least outstanding first, ejection and probing, never a silent repeat."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import ConnectionBudget, Endpoints, UpstreamError, UpstreamPool
from tests.rawhttp import RawUpstream
from tests.support import eventually, free_port

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def _endpoints(urls: list[str], *, limit: int = 64, probe: float = 0.1) -> Endpoints:
    def pool(url: str, budget: ConnectionBudget) -> UpstreamPool:
        return UpstreamPool(url, connect_timeout=1.0, read_timeout=5.0, budget=budget)

    return Endpoints(urls, pool, budget=ConnectionBudget(limit, 0.2), probe_interval=probe, connect_timeout=1.0)


async def _get(endpoints: Endpoints, path: bytes = b"/") -> bytes:
    response = await endpoints.request(b"GET", path, [])
    return b"".join([chunk async for chunk in response.iter_chunks()])


async def _value(value):
    return value


async def test_requests_go_to_the_endpoint_with_the_fewest_outstanding():
    def script(head: bytes):
        return [5.0, OK] if b"/slow" in head else OK

    slow, fast = await RawUpstream(script).start(), await RawUpstream(script).start()
    endpoints = _endpoints([slow.url, fast.url])
    try:
        held = [asyncio.create_task(_get(endpoints, b"/slow")) for _ in range(2)]  # one lands on each, then waits
        await eventually(lambda: _value(sum(e.outstanding for e in endpoints.endpoints) == 2))
        busy = [e for e in endpoints.endpoints if e.outstanding]
        assert len(busy) == 2  # split: the second went where nothing was outstanding
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert [e.outstanding for e in endpoints.endpoints] == [0, 0]  # a cancelled request is no longer outstanding
        for _ in range(10):
            assert await _get(endpoints) == b"ok"
        assert abs(len(slow.received) - len(fast.received)) <= 2  # idle endpoints share the traffic
    finally:
        endpoints.close()
        await slow.stop()
        await fast.stop()


async def test_a_refused_endpoint_is_ejected_and_its_requests_go_elsewhere():
    live = await RawUpstream(lambda head: OK).start()
    dead_port = free_port()
    endpoints = _endpoints([f"http://127.0.0.1:{dead_port}", live.url], probe=10.0)
    try:
        for _ in range(20):
            assert await _get(endpoints) == b"ok"  # never a refusal: the request never reached the dead one
        dead = endpoints.endpoints[0]
        assert not dead.up and dead.ejections == 1 and dead.connect_failures == 1  # tried once, then left alone
        assert len(live.received) == 20
    finally:
        endpoints.close()
        await live.stop()


async def test_an_ejected_endpoint_is_probed_back_into_rotation():
    live = await RawUpstream(lambda head: OK).start()
    port = free_port()
    endpoints = _endpoints([f"http://127.0.0.1:{port}", live.url], probe=0.1)
    try:
        for _ in range(3):  # ties alternate: one of these tries the refused endpoint
            await _get(endpoints)
        assert not endpoints.endpoints[0].up
        back = RawUpstream(lambda head: OK)
        back.server = await asyncio.start_server(back._serve, "127.0.0.1", port)  # the endpoint restarts
        back.port = port
        await eventually(lambda: _value(endpoints.endpoints[0].up), timeout=2.0)
        for _ in range(6):
            await _get(endpoints)
        assert back.received  # traffic returned to it
        await back.stop()
    finally:
        endpoints.close()
        await live.stop()


async def test_a_request_that_may_have_reached_an_endpoint_is_never_sent_again():
    resets = await RawUpstream(lambda head: None).start()  # reads the request, then closes without an answer
    other = await RawUpstream(lambda head: OK).start()
    endpoints = _endpoints([resets.url, other.url])
    endpoints._turn = len(endpoints.endpoints) - 1  # the next pick starts at the first endpoint
    try:
        with pytest.raises(UpstreamError) as caught:
            await endpoints.request(b"POST", b"/charge", [], b'{"amount": 10}')
        assert caught.value.reached and caught.value.kind == "reset"
        assert len(resets.received) == 1 and other.received == []  # not repeated on the other endpoint
        assert endpoints.endpoints[0].up  # it answered the connect: not ejected
    finally:
        endpoints.close()
        await resets.stop()
        await other.stop()


async def test_when_every_endpoint_is_refused_the_error_says_so():
    endpoints = _endpoints([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    try:
        with pytest.raises(UpstreamError) as caught:
            await _get(endpoints)
        assert caught.value.kind == "connect" and not caught.value.reached
        assert sum(e.connect_failures for e in endpoints.endpoints) == 2  # each tried once
    finally:
        endpoints.close()


async def test_the_connection_limit_holds_for_the_version_not_each_endpoint():
    hang = await RawUpstream(lambda head: [3.0, OK]).start()
    hang2 = await RawUpstream(lambda head: [3.0, OK]).start()
    endpoints = _endpoints([hang.url, hang2.url], limit=2)
    try:
        held = [asyncio.create_task(_get(endpoints)) for _ in range(2)]
        await eventually(lambda: _value(endpoints.budget.open == 2))
        with pytest.raises(UpstreamError) as caught:
            await _get(endpoints)
        assert caught.value.kind == "busy" and "limits.upstream_connections" in str(caught.value)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    finally:
        endpoints.close()
        await hang.stop()
        await hang2.stop()
