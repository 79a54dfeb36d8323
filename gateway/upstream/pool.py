"""Keep-alive connections to one upstream origin, and sending one request over them.

A request goes out on an idle connection when there is one, else a new one; a connection
the upstream closed while idle is detected on first use and the request is sent once more
on a fresh connection, but only when nothing of it can have been processed (no byte of
an answer came back and the body can be replayed).

An answer abandoned half-way (a client that stops reading a stream: the model must stop
generating, so the connection closes) is replaced in the background by a fresh idle
connection, within the connection budget, so the next request does not wait for a connect
and, on https, a TLS handshake.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from gateway.upstream.connection import UpstreamError, UpstreamResponse, _Connection
from gateway.upstream.egress import ForwardProxy, open_tunnel

_CRLF = b"\r\n"


class ConnectionBudget:
    """How many connections may be open at once (one version's, across its endpoints), and waiting for one."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait  # how long a request waits for a free slot before it is refused (busy)
        self.open = 0
        self._freed: asyncio.Event | None = None

    async def take(self, where: str) -> None:
        if self.open >= self.limit:
            deadline = time.monotonic() + self.wait
            while self.open >= self.limit:
                if self._freed is None:
                    self._freed = asyncio.Event()
                self._freed.clear()
                try:
                    await asyncio.wait_for(self._freed.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise UpstreamError("busy", f"all {self.limit} connections to {where} are in use "
                                                f"(limits.upstream_connections)", reached=False) from None
        self.open += 1  # counted from the attempt on, so concurrent connects respect the bound

    def give_back(self) -> None:
        self.open -= 1
        if self._freed is not None:
            self._freed.set()


class UpstreamPool:
    """Keep-alive connections to one upstream origin."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        idle_timeout: float = 30.0,
        max_idle: int = 512,
        max_connections: int = 512,
        budget: ConnectionBudget | None = None,
        proxy: ForwardProxy | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()
        self.base_path = parts.path.rstrip("/").encode()
        self.ssl_context = ssl_context if parts.scheme == "https" else None
        if parts.scheme == "https" and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        # a bound on what one version may hold, slow clients or not (shared by its endpoints)
        self.budget = budget or ConnectionBudget(max_connections, connect_timeout)
        self.proxy = proxy  # a forward proxy on the way (`gateway.upstream.egress`)
        # Through a proxy, a plain-HTTP request names its origin in the request line (absolute form).
        self._origin = (b"http://" + self.host_header) if proxy is not None and self.scheme == "http" else b""
        self._idle: deque[_Connection] = deque()
        self._replacing: asyncio.Task[None] | None = None  # a connection opened for an abandoned one
        self._closed = False

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] = b"",
        done: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """Send one request; returns when the status and headers have arrived.

        `target` is the path and query below the pool's base URL. `headers` must not hold
        Host, Content-Length or Transfer-Encoding; they are written here. `done` is called
        once the answer is over (read, released or aborted).
        """
        head_only = method == b"HEAD"
        replayable = isinstance(body, (bytes, bytearray))
        request_head = self._head(method, target, headers, len(body) if replayable else None)
        for attempt in (0, 1):
            conn = await self._acquire()
            conn.head_only = head_only
            try:
                if replayable:
                    conn.transport.write(request_head + body if len(body) < 65536 else request_head)  # type: ignore[union-attr]
                    if len(body) >= 65536:
                        conn.transport.write(body)  # type: ignore[union-attr]
                else:
                    conn.transport.write(request_head)  # type: ignore[union-attr]
                    await self._send_chunked(conn, body)  # type: ignore[arg-type]
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self.read_timeout)
                if conn.error is not None:  # broken in the same read as the head: say so before any answer starts
                    raise conn.error
            except UpstreamError as exc:
                conn.abort()
                if attempt == 0 and conn.reused and replayable and not conn.got_bytes and exc.kind == "reset":
                    continue  # the upstream closed an idle connection as we used it: try a fresh one
                raise
            except BaseException:
                conn.abort()
                raise
            return UpstreamResponse(conn, self._put_idle, self.read_timeout, head_only, done, self._replace_abandoned)
        raise AssertionError("unreachable")

    def _head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], length: int | None) -> bytes:
        # The framing fields in their conventional case: names are case-insensitive, but some
        # intermediaries (proxy.py among them) match them by exact spelling and would add their own.
        lines = [method, b" ", self._origin, self.base_path, target, b" HTTP/1.1\r\nHost: ", self.host_header, _CRLF]
        if self._origin and self.proxy.authorization:  # type: ignore[union-attr]
            lines += (b"Proxy-Authorization: ", self.proxy.authorization, _CRLF)  # type: ignore[union-attr]
        for name, value in headers:
            lines += (name, b": ", value, _CRLF)
        if length is None:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            lines += (b"Content-Length: ", str(length).encode(), _CRLF)
        lines.append(_CRLF)
        return b"".join(lines)

    async def _send_chunked(self, conn: _Connection, body: AsyncIterator[bytes]) -> None:
        transport = conn.transport
        async for piece in body:
            if piece:
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))  # type: ignore[union-attr]
                await conn.drain()
        transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or now - conn.idle_since > self.idle_timeout:
                conn.abort()
                continue
            conn.reused = True
            conn._begin()
            return conn
        return await self._connect()

    def _lost(self, conn: _Connection | None) -> None:
        self.budget.give_back()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(loop, self._lost))
            return made[-1]

        await self.budget.take(f"{self.host}:{self.port}")
        try:
            return await asyncio.wait_for(self._open(loop, protocol), self.connect_timeout)
        except BaseException as exc:
            if not made or made[0].on_lost is not None:  # the slot was not given back by a lost connection
                if made:
                    made[0].on_lost = None
                self._lost(None)
            if isinstance(exc, asyncio.TimeoutError):
                raise UpstreamError("timeout", f"connecting to {self.host}:{self.port} timed out", reached=False) from None
            if isinstance(exc, ssl.SSLError):
                raise UpstreamError("connect", f"TLS handshake with {self.host}:{self.port} failed: "
                                               f"{exc.reason or exc}", reached=False) from None
            if isinstance(exc, OSError):
                where = f"the proxy {self.proxy.host}:{self.proxy.port}" if self.proxy else f"{self.host}:{self.port}"
                raise UpstreamError("connect", f"cannot connect to {where}: {exc.strerror or exc}", reached=False) from None
            raise

    async def _open(self, loop: asyncio.AbstractEventLoop, protocol) -> _Connection:
        """A connection to the origin: direct, to the proxy (plain HTTP), or through its tunnel (HTTPS)."""
        if self.proxy is None:
            _, conn = await loop.create_connection(protocol, self.host, self.port, ssl=self.ssl_context,
                                                   server_hostname=self.host if self.ssl_context else None)
            return conn
        if self.ssl_context is None:
            _, conn = await loop.create_connection(protocol, self.proxy.host, self.proxy.port)
            return conn
        conn = protocol()
        await open_tunnel(loop, conn, self.proxy, self.host, self.port, self.ssl_context)
        return conn

    def _put_idle(self, conn: _Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        conn.waiter = None
        conn.idle = True  # from now on, any byte it receives retires it
        self._idle.append(conn)

    def _replace_abandoned(self) -> None:
        """Open one connection in place of one an unfinished answer closed, unless one is idle or on its way."""
        if self._idle or self._replacing is not None or self._closed or self.budget.open >= self.budget.limit:
            return
        self._replacing = asyncio.get_running_loop().create_task(self._park_replacement())

    async def _park_replacement(self) -> None:
        try:
            conn = await self._connect()
        except Exception:  # nobody waits on it: the next request that connects reports the failure itself
            return
        finally:
            self._replacing = None
        if self._closed:
            conn.abort()
        else:
            self._put_idle(conn)

    def close(self) -> None:
        self._closed = True
        if self._replacing is not None:
            self._replacing.cancel()
        while self._idle:
            self._idle.pop().abort()
