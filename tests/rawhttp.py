"""Raw HTTP on real loopback sockets, for tests that must control or see the exact bytes.

`RawUpstream` is an upstream server that answers each request with scripted bytes and keeps
the exact bytes it received. `raw_request` sends exact bytes to a server and reads what
comes back. Neither parses more than it has to, so neither hides what is on the wire.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Script = Callable[[bytes], bytes | list[bytes | float | None] | None]
"""Given the request's head (request line and headers), the answer: bytes, or pieces and pauses, or None (close).

In a list of pieces, a number is a pause in seconds and None closes the connection there.
"""


@dataclass
class RawUpstream:
    script: Script
    received: list[bytes] = field(default_factory=list)
    server: asyncio.base_events.Server | None = None
    port: int = 0
    open_now: int = 0
    max_open: int = 0  # the most connections it held at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "RawUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def request_lines(self) -> list[bytes]:
        return [raw.split(b"\r\n", 1)[0] for raw in self.received]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                self.received.append(head + body)
                answer = self.script(head)
                if answer is None:
                    return
                for piece in answer if isinstance(answer, list) else [answer]:
                    if piece is None:
                        return
                    if isinstance(piece, (int, float)):
                        await asyncio.sleep(piece)
                    else:
                        writer.write(piece)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


def raw_request(port: int, data: bytes | list[bytes | float], *, timeout: float = 10.0) -> bytes:
    """Send exact bytes (pieces with pauses between) to 127.0.0.1:port; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for piece in data if isinstance(data, list) else [data]:
            if isinstance(piece, (int, float)):
                time.sleep(piece)
            else:
                try:
                    s.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""
