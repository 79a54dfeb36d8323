"""A scriptable HTTP/1.1 upstream for the proxy's tests, on a real loopback socket.

It shows what reached it (`/echo` answers with the request it saw) and misbehaves on
request (`/reset`, `/hang`, `/truncate`, `/gated-stream`), which the demo model cannot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httptools


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class EchoUpstream:
    server: asyncio.base_events.Server | None = None
    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    closed_early: int = 0
    open_writers: set = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "EchoUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def drop_connections(self) -> None:
        """Close every connection from the upstream's side, as a server's idle timeout does."""
        for writer in list(self.open_writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_writers.add(writer)
        try:
            while True:
                seen = await _read_request(reader)
                if seen is None:
                    return
                self.requests.append(seen)
                if not await self._answer(seen, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_early += 1
        finally:
            self.open_writers.discard(writer)
            writer.close()

    async def _answer(self, seen: Seen, reader, writer: asyncio.StreamWriter) -> bool:
        path = seen.path
        args = parse_qs(seen.query)
        if path == "/reset":
            writer.transport.abort()
            return False
        if path == "/hang":
            try:
                await reader.read()  # until the gateway gives up and closes
            finally:
                self.closed_early += 1
            return False
        if path == "/truncate":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
            await writer.drain()
            writer.transport.abort()
            return False
        if path == "/gated-stream":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(_chunk(b"data: first\n\n"))
            await writer.drain()
            await self.gate.wait()  # the test opens the gate once the client holds the first event
            writer.write(_chunk(b"data: second\n\n") + b"0\r\n\r\n")
            await writer.drain()
            return True
        if path == "/big":
            size = int(args.get("size", ["1000000"])[0])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            block = b"y" * 65536
            sent = 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
            return True
        status = int(args.get("status", ["200"])[0])
        body = json.dumps({
            "method": seen.method,
            "path": seen.path,
            "query": seen.query,
            "headers": seen.headers,
            "body_length": len(seen.body),
            "body_sha256": hashlib.sha256(seen.body).hexdigest(),
        }).encode()
        extra = b"connection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nx-request-id: upstream-made\r\n"
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (status, len(body), extra) + body)
        await writer.drain()
        return True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Collector:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode().lower(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    while not collector.done:
        data = await reader.read(65536)
        if not data:
            return None
        parser.feed_data(data)
    url = httptools.parse_url(collector.url)
    return Seen(
        parser.get_method().decode(),
        url.path.decode(),
        (url.query or b"").decode(),
        collector.headers,
        b"".join(collector.body),
    )
