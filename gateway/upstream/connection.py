"""One keep-alive HTTP/1.1 connection to an upstream, parsing one answer at a time (httptools).

`UpstreamResponse` is what a caller holds: status and headers at once, the body chunk by
chunk as it arrives. Cancelling the coroutine that waits on a response aborts the
connection, so the upstream sees the client's disconnect at once.

How an answer's body ends follows RFC 9112 section 6.3, decided once its head is in:
none for 1xx (skipped), 204, 304 and answers to HEAD; chunked when Transfer-Encoding ends
in chunked; Content-Length bytes when given; otherwise the connection's close, which is
then a clean end, not a reset. Transfer-Encoding with Content-Length, several or invalid
lengths, bad chunk sizes, a 101 (the gateway relays no protocol switch) and a header block
over the cap are errors (502). A connection that receives bytes while idle is discarded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import httptools

from gateway.coalescing import CoalescingTransport

_HIGH_WATER = 256 * 1024  # body bytes buffered before we stop reading from the upstream
MAX_HEADER_BYTES = 64 * 1024  # an answer's header block larger than this is refused, not relayed
MAX_HEADERS = 256


class UpstreamError(Exception):
    """The upstream could not give an answer: `kind` is connect, reset, timeout, protocol, busy or ended.

    `reached` is False when no byte of the request can have reached the upstream (the
    connection was never made): such a request may be sent elsewhere without being repeated.
    """

    def __init__(self, kind: str, message: str, *, reached: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.reached = reached


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, parsing one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[["_Connection"], None] | None = None,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.loop = loop
        self.on_lost = on_lost  # the pool counts the connections it holds
        self.max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._write_paused: asyncio.Future[None] | None = None
        self._deadline = 0.0  # when the current wait times out (loop time)
        self._timer: asyncio.TimerHandle | None = None  # checks `_deadline` when it fires
        self._begin()

    def _begin(self, head_only: bool = False) -> None:
        self.head_only = head_only  # an answer to HEAD: no body, whatever its headers say
        self.idle = False
        self.until_close = False  # the body ends when the upstream closes the connection
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.sink: Callable[[bytes], bool] | None = None  # while a body is piped: takes each piece as it is parsed
        self.sink_full = False  # the sink is full: the pipe waits for it to drain, pieces queue meanwhile
        self.sink_timeout = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # while the loop is busy, requests leave together at the end of its pass (`gateway.coalescing`)
        self.transport = CoalescingTransport(transport, asyncio.get_running_loop())  # type: ignore[assignment,arg-type]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # bytes nobody asked for: whatever they are, this connection is not reusable
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("protocol", f"upstream switched protocols ({self.status}); the gateway relays "
                                                 "HTTP answers only"))
            self.abort()
        except httptools.HttpParserError as exc:
            if not self.complete:
                self._fail(UpstreamError("protocol", f"upstream sent an invalid HTTP answer: {exc}"))
            self.abort()  # bytes after a complete answer are no next answer: the connection goes

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self.on_lost is not None:
            self.on_lost(self)
            self.on_lost = None
        if not self.complete and self.until_close and exc is None and self.error is None:
            self.complete = True  # a close-delimited body ends here, whole
            self._wake()
        elif not self.complete:
            self._fail(UpstreamError("reset", "upstream closed the connection before the answer was complete"))
        paused = self._write_paused
        if paused is not None and not paused.done():
            paused.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        paused, self._write_paused = self._write_paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request is no answer: stop here, the connection goes
            raise ValueError("bytes after a complete answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes or len(self.headers) >= MAX_HEADERS:
            self._fail(UpstreamError("protocol", f"upstream sent a header block over {self.max_header_bytes} bytes "
                                                 f"or {MAX_HEADERS} fields; not relayed"))
            raise ValueError("header block too large")  # stops the parser; data_received aborts the connection
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # 1xx: an interim answer (or a 101, refused in data_received); the real one follows
            if self.status != 101:
                self.headers, self.header_bytes = [], 0
            return
        self.until_close = self._ends_with_close()
        self.headers_done = True
        self._wake()

    def _ends_with_close(self) -> bool:
        """RFC 9112 6.3: no length and not chunked, and a body is possible: it ends when the connection closes."""
        if self.head_only or self.status in (204, 304):
            return False
        coding = b""
        for name, value in self.headers:
            if name == b"content-length":
                return False
            if name == b"transfer-encoding":
                coding = value.rsplit(b",", 1)[-1].strip().lower()
        return coding != b"chunked"

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:  # piped: the piece goes on at once, no task wakes for it
            self._deadline = self.loop.time() + self.sink_timeout  # the read timeout counts from the last piece
            if not sink(body):
                self.sink, self.sink_full = None, True  # the rest is queued, and reading stops at the high water
                self._wake()
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        if self.head_only:  # HEAD: nothing follows the head (a Content-Length describes the GET)
            self.complete = True
            self._wake()
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # helpers
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def abort(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    async def wait(self, timeout: float) -> None:
        """Wait for the next parser event, at most `timeout` seconds.

        One timer per connection rather than one per wait (a stream waits once an event,
        and arming and cancelling a timer costs more than the rest of the wait): each wait
        moves the deadline, and the timer, when it fires before it, re-arms for it.
        """
        loop = self.loop
        fut = loop.create_future()
        self.waiter = fut
        deadline = self._deadline = loop.time() + timeout
        if self._timer is None or self._timer.when() > deadline:
            self._arm(deadline)
        try:
            await fut
        except asyncio.CancelledError:
            self.abort()
            raise
        finally:
            self.waiter = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        fut = self.waiter
        if fut is None or fut.done():
            return  # nobody waits: the next wait arms a timer again
        if self.loop.time() >= self._deadline:
            fut.set_exception(UpstreamError("timeout", "upstream did not answer in time"))
        else:
            self._arm(self._deadline)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def drain(self) -> None:
        paused = self._write_paused
        if paused is not None:
            await paused
        if self.closed:
            raise UpstreamError("reset", "upstream closed the connection while the request was being sent")


class UpstreamResponse:
    """Status and headers of an upstream answer; the body is read with `read_chunk`."""

    __slots__ = ("status", "headers", "_conn", "_keep", "_read_timeout", "_head_only", "_released", "_done", "_abandoned")

    def __init__(self, conn: _Connection, keep: Callable[[_Connection], None], read_timeout: float, head_only: bool,
                 done: Callable[[], None] | None = None, abandoned: Callable[[], None] | None = None) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._conn = conn
        self._keep = keep  # where a clean connection goes back for reuse (its pool)
        self._read_timeout = read_timeout
        self._head_only = head_only
        self._released = False
        self._done = done  # told once, when this answer is over (read, released or aborted)
        self._abandoned = abandoned  # told when it was released unfinished and healthy (its pool replaces the connection)

    @property
    def complete(self) -> bool:
        """True when the whole body has already arrived (answer it in one piece)."""
        return self._head_only or self._conn.complete

    def take_body(self) -> bytes:
        """The whole body when `complete`; releases the connection."""
        conn = self._conn
        body = b"" if self._head_only else b"".join(conn.chunks)
        conn.chunks.clear()
        self.release()
        return body

    async def read_chunk(self) -> bytes:
        """The next piece of body as it arrives; b"" at the end (the connection is then released)."""
        conn = self._conn
        while True:
            if conn.chunks:
                chunk = conn.chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.buffered < _HIGH_WATER // 2:
                    conn.resume_reading()
                return chunk
            if self._head_only or conn.complete:
                self.release()
                return b""
            if conn.error is not None:
                self.release()
                raise conn.error
            await conn.wait(self._read_timeout)

    async def pipe(self, sink: Callable[[bytes], bool], drain: Callable[[], Awaitable[object]]) -> None:
        """Hand every further piece of body to `sink` as the parser yields it, until the end.

        A streamed answer relayed piece by piece costs a task wake-up, a future and an await
        per piece; piped, a piece goes from the upstream's read to `sink` in the same
        callback. `sink` returns False when it can take no more (its client is slow): pieces
        queue, and reading stops at the high water, until `drain()` returns. Ends, with the
        connection released, like `read_chunk` returning b"", or raises as it does.
        """
        conn = self._conn
        while True:
            while conn.chunks:  # what arrived before, or in the read that filled the sink
                chunk = conn.chunks.popleft()
                conn.buffered -= len(chunk)
                if not sink(chunk):
                    await drain()
            if self._head_only or conn.complete:
                self.release()
                return
            if conn.error is not None:
                self.release()
                raise conn.error
            if conn.sink_full:
                conn.sink_full = False
                await drain()
                continue  # it may have been ended while the sink drained
            conn.sink, conn.sink_timeout = sink, self._read_timeout
            conn.resume_reading()
            try:
                await conn.wait(self._read_timeout)
            finally:
                conn.sink = None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_chunk():
            yield chunk

    def abort(self, reason: str) -> None:
        """End this answer now (a pause landed): the reader gets an `ended` error."""
        self._conn._fail(UpstreamError("ended", reason))
        self._conn.abort()
        self.release()

    def release(self) -> None:
        """Give the connection back for reuse if it is clean, else close it. Idempotent."""
        if self._released:
            return
        self._released = True
        if self._done is not None:
            self._done()
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.closed and not self._head_only and conn.error is None:
            self._keep(conn)
            return
        abandoned = not conn.complete and not conn.closed and conn.error is None
        conn.abort()
        if abandoned and self._abandoned is not None:
            self._abandoned()


