"""Writes of a busy loop held to the end of its pass: in order, together, none lost; a quiet loop holds nothing.

Each test runs on uvloop (what the gateway serves with) and on asyncio's own loop, over a
real loopback TCP connection whose far end is a plain socket the test reads without
blocking, so "not sent yet" and "sent" are what the peer can actually read.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

import pytest
import uvloop

from gateway.coalescing import FLUSH_AT, CoalescingTransport

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """Run a test body `body(transport, peer)` on a fresh loop of the kind named by the parameter."""

    def runner(body):
        loop = LOOPS[request.param]()
        try:
            loop.run_until_complete(_connected(body))
        finally:
            loop.close()

    return runner


async def _connected(body):
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
        peer, _ = listener.accept()
        peer.setblocking(False)
        try:
            await body(CoalescingTransport(transport, loop), peer)
        finally:
            transport.abort()
            peer.close()
    finally:
        listener.close()


def _readable(peer: socket.socket) -> bytes:
    """What has arrived at the peer so far (b"" when nothing has)."""
    data = b""
    while True:
        try:
            more = peer.recv(1 << 20)
        except BlockingIOError:
            return data
        if not more:
            return data
        data += more


async def _arrived(peer: socket.socket, size: int) -> bytes:
    data = b""
    for _ in range(200):
        data += _readable(peer)
        if len(data) >= size:
            return data
        await asyncio.sleep(0.005)
    return data


async def _busy(transport, peer) -> None:
    """Make the loop busy (two connections wrote in one pass), then start a pass whose writes are held."""
    other = CoalescingTransport(transport.transport, asyncio.get_running_loop())  # a second writer in this pass
    transport.write(b"")
    other.write(b"")
    await asyncio.sleep(0)  # that pass ends: the loop is busy now
    await asyncio.sleep(0)


def test_on_a_quiet_loop_the_first_write_of_a_pass_leaves_at_once_the_rest_at_its_end(run):
    async def body(transport, peer):
        transport.write(b"first;")
        assert _readable(peer) == b"first;"  # sent without yielding to the loop
        transport.write(b"one ")
        transport.write(bytearray(b"two "))
        transport.write(memoryview(b"three"))
        assert transport.get_write_buffer_size() == len(b"one two three")
        for _ in range(3):
            assert _readable(peer) == b""  # the writer has not yielded to the loop: nothing more is sent
        await asyncio.sleep(0)  # the pass ends
        assert await _arrived(peer, 13) == b"one two three"
        assert transport.get_write_buffer_size() == 0

    run(body)


def test_on_a_busy_loop_every_write_waits_for_the_end_of_the_pass(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        transport.write(b"held")
        assert _readable(peer) == b""
        await asyncio.sleep(0)
        assert await _arrived(peer, 4) == b"held"
        await asyncio.sleep(0)  # a pass with one writer: the loop is quiet again
        transport.write(b";now")
        assert _readable(peer) == b";now"

    run(body)


def test_a_buffer_the_caller_reuses_leaves_as_it_was_written(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        buffer = bytearray(b"first")
        transport.write(buffer)
        buffer[:] = b"XXXXX"
        await asyncio.sleep(0)
        assert await _arrived(peer, 5) == b"first"

    run(body)


def test_a_large_write_leaves_at_once_after_what_is_held(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        transport.write(b"head;")
        large = b"x" * FLUSH_AT
        transport.write(large)
        assert transport.get_write_buffer_size() < FLUSH_AT  # nothing held; at most what the kernel did not take yet
        data = b""
        for _ in range(50):  # without yielding to the loop: it is already in the kernel
            data += _readable(peer)
        assert data.startswith(b"head;x") and len(data) > 5

    run(body)


def test_held_bytes_past_the_limit_leave_at_once(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        piece = b"y" * (FLUSH_AT // 4)
        for _ in range(3):
            transport.write(piece)
        assert _readable(peer) == b""
        transport.write(piece)  # the fourth reaches FLUSH_AT
        assert await _arrived(peer, FLUSH_AT) == piece * 4

    run(body)


def test_close_sends_what_is_held_first(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        transport.write(b"last words")
        transport.close()
        assert transport.is_closing()
        data = b""
        for _ in range(200):
            try:
                more = peer.recv(1024)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            if not more:
                break
            data += more
        assert data == b"last words"  # then the end of the stream

    run(body)


def test_abort_drops_what_is_held(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0.02)
        try:
            assert peer.recv(1024) == b""
        except ConnectionResetError:
            pass  # an abort resets the connection
        except BlockingIOError:
            pytest.fail("the peer saw neither the end nor a reset")

    run(body)


def test_write_now_goes_at_once_unless_bytes_are_held(run):
    async def body(transport, peer):
        transport.write_now(b"piece;")
        assert _readable(peer) == b"piece;"  # nothing held: sent without waiting for the pass
        await _busy(transport, peer)
        transport.write(b"held;")
        transport.write_now(b"after;")
        assert _readable(peer) == b""  # it queues behind the held bytes
        await asyncio.sleep(0)
        assert await _arrived(peer, 11) == b"held;after;"

    run(body)


def test_a_write_after_the_connection_closed_is_dropped(run):
    async def body(transport, peer):
        await _busy(transport, peer)
        transport.write(b"late")
        transport.transport.close()  # the connection went away under the held bytes
        await asyncio.sleep(0)
        assert transport.get_write_buffer_size() == 0

    run(body)


def test_the_registry_of_passes_does_not_keep_a_loop_alive():
    loop = uvloop.new_event_loop()

    async def make() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, *listener.getsockname())
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        wrapped.write(b"x")
        await asyncio.sleep(0)
        wrapped.abort()
        listener.close()

    loop.run_until_complete(make())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
