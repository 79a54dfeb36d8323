"""Open-loop load through the load balancer: a fixed rate whatever the answers do, every answer kept."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any
from dataclasses import dataclass
from urllib.parse import urlsplit


from scripts.fleetlib.common import PREDICT, TOKENS

# ------------------------------------------------------------------------------- load
@dataclass
class Answer:
    """One request of the load, as its client saw it (times are time.monotonic())."""

    i: int
    due: float  # when the schedule said to send it
    sent: float = 0.0
    done: float = 0.0
    status: int = 0  # 0: no answer (see `error`)
    error: str | None = None  # what the client met: refused, reset, timeout...
    error_type: str | None = None  # the gateway's {"error": {"type"}}
    level: str | None = None  # X-Oversight-Level
    route: str | None = None  # X-Oversight-Route
    request_id: str = ""
    gateway_id: str | None = None  # X-Request-Id on the answer: the gateway's (nginx's own pages have none)
    upstream: str | None = None  # X-Fleet-Upstream: the replica(s) nginx tried
    ticket: str | None = None

    @property
    def by_nginx(self) -> bool:
        """An answer nginx made itself (no replica answered it)."""
        return self.status > 0 and self.gateway_id is None


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers (lower-case names), body and whether the connection may be kept."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return status, headers, b"".join(parts), keep
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"])), keep
    return status, headers, await reader.read(), False


class Client:
    """A small keep-alive HTTP/1.1 client on asyncio streams: cheap enough for hundreds of requests a second."""

    def __init__(self, base: str, *, timeout: float = 15.0, connections: int = 256) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(connections)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      answer: Answer | None = None) -> Answer:
        answer = answer or Answer(0, time.monotonic())
        async with self.slots:
            answer.sent = time.monotonic()
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            data = (f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{head}"
                    f"content-length: {len(body)}\r\n\r\n").encode() + body
            conn = self.idle.pop() if self.idle else None
            try:
                if conn is None:
                    conn = _Conn(*await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout))
                conn.writer.write(data)
                status, got, content, keep = await asyncio.wait_for(_read_answer(conn.reader), self.timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    asyncio.TimeoutError) as exc:
                answer.done = time.monotonic()
                answer.error = _describe(exc)
                if conn is not None:
                    conn.close()
                return answer
            answer.done = time.monotonic()
            if keep:
                self.idle.append(conn)
            else:
                conn.close()
        answer.status = status
        answer.level = got.get("x-oversight-level")
        answer.route = got.get("x-oversight-route")
        answer.gateway_id = got.get("x-request-id")
        answer.upstream = got.get("x-fleet-upstream")
        if got.get("content-type", "").startswith("application/json") and content:
            try:
                doc = json.loads(content)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                if isinstance(doc.get("error"), dict):
                    answer.error_type = doc["error"].get("type")
                if status == 202 and isinstance(doc.get("ticket"), str):
                    answer.ticket = doc["ticket"]
        return answer

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-answer"
    return type(exc).__name__


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class Load:
    """Open-loop load through one URL: request i is due at start + i/rate, whatever earlier answers did.

    Runs on its own thread and event loop (faults are injected from the main thread, where
    processes must be started to die with it). Each request is a distinct `POST /models/demo/predict`
    with its own X-Request-Id, so no retry ever joins another's ticket.
    """

    def __init__(self, url: str, rate: float, *, token: str = TOKENS["client"], timeout: float = 15.0,
                 connections: int = 256, path: str = PREDICT) -> None:
        self.url, self.rate, self.token, self.timeout, self.connections, self.path = \
            url, rate, token, timeout, connections, path
        self.run_id = os.urandom(3).hex()
        self.answers: list[Answer] = []
        self.watch: Any = None  # a MasterWatch, set by run_faults with Sentinel
        self.started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Load":
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="fleet-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        """Stop sending; wait for the answers in flight (at most the request timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 10)
        return self.answers

    def _main(self) -> None:
        loop = _event_loop()
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()

    async def _run(self) -> None:
        client = Client(self.url, timeout=self.timeout, connections=self.connections)
        pending: set[asyncio.Task] = set()
        i = 0
        while not self._stop.is_set():
            due = self.started + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            answer = Answer(i, due, request_id=f"fleet-{self.run_id}-{i}")
            self.answers.append(answer)
            task = asyncio.create_task(self._one(client, answer))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if pending:
            await asyncio.wait(pending)
        client.close()

    async def _one(self, client: Client, answer: Answer) -> None:
        body = json.dumps({"applicant": {"id": answer.request_id, "group": "AB"[answer.i % 2],
                                         "income": 30000 + answer.i % 50000}}).encode()
        await client.request("POST", self.path, {"content-type": "application/json",
                                                 "authorization": f"Bearer {self.token}",
                                                 "x-request-id": answer.request_id}, body, answer)


def check_tickets(bases: list[str], tickets: list[str], *, concurrency: int = 16) -> dict[str, int]:
    """Which tickets the review queue still has: {ticket: status of GET /review/tickets/{id}} (200: present).

    Several bases (embedded stores, one per replica): present if any of them has it."""

    async def run() -> dict[str, int]:
        clients = [Client(b, timeout=15, connections=concurrency) for b in bases]
        gate = asyncio.Semaphore(concurrency)
        found: dict[str, int] = {}

        async def one(ticket: str) -> None:
            async with gate:
                status = 0
                for client in clients:
                    seen = await client.request("GET", f"/review/tickets/{ticket}",
                                                {"authorization": f"Bearer {TOKENS['reviewer']}"})
                    status = seen.status
                    if status == 200:
                        break
                found[ticket] = status

        await asyncio.gather(*(one(t) for t in tickets))
        for client in clients:
            client.close()
        return found

    loop = _event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


