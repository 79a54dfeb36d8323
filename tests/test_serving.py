"""The server protocol's keep-alive timeout: an idle connection is closed, one in use never is."""

from __future__ import annotations

import asyncio

from tests.rawhttp import RawUpstream
from tests.support import TOKENS, serve_in_process, write_config

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
REQUEST = b"GET /models/m/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKENS["client"].encode() + b"\r\n\r\n"


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


async def test_a_connection_in_use_outlives_the_timeout_and_an_idle_one_is_closed(tmp_path):
    upstream = await RawUpstream(lambda head: OK).start()
    config = write_config(tmp_path, {"m": {"v1": upstream.url}}, policy={"defaults": {"sample_rate": {0: 0.0}}})
    try:
        async with serve_in_process(config, keep_alive=0.5) as gw:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
            started = answered = loop.time()
            while loop.time() - started < 1.6:  # more than three timeouts long, a request every 0.2 s
                assert await _exchange(reader, writer) == b"HTTP/1.1 200 OK"
                answered = loop.time()
                await asyncio.sleep(0.2)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: the server closes it
            assert 0.45 <= loop.time() - answered <= 1.5
            writer.close()
    finally:
        await upstream.stop()
