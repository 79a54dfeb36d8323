"""Writes of a busy event loop held to the end of its pass and sent back to back.

A write to a peer on the same host that sleeps in `epoll_wait` wakes it from inside the
write system call (`sock_def_readable` -> `try_to_wake_up`); when the peer's core is
idle, and above all on a virtual machine, that wake is an inter-processor interrupt and
the costliest part of the write (measured at level 0 in front of a local model server:
17 % of the gateway's CPU). Under load one pass of the event loop answers many requests;
written as they are made, each write finds its peer asleep again and pays the wake.
Held until the pass ends and written back to back, the first one wakes the peer and the
rest find it awake. On a loop that is not busy nothing is held (see `_Pass`).

What a user of the wrapped transport can count on:
- a connection's bytes leave in the order written (every write goes through here);
- what a connection holds leaves in one system call at the end of the pass;
- `close()` sends what is held first, `abort()` drops it (as the transport itself does);
- a write of `FLUSH_AT` bytes or more is not held: it leaves at once, after what is held;
- `write_now()` is not held unless bytes already are (a stream's pieces).
The price, under load, is one pass of latency for the writes held.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

log = logging.getLogger("gateway.server")

FLUSH_AT = 64 * 1024  # held bytes past this leave at once: a large answer gains nothing by waiting


class _Pass:
    """One pass of an event loop, as writes see it.

    When the loop is busy (in the last pass that wrote, more than one connection wrote),
    every write waits for the end of the pass and they leave back to back. When it is not
    (one request at a time, a stream's events), a pass's first write leaves at once:
    holding it would gain no shared wake and cost one, since its peer's answer would then
    always find this loop asleep (measured at one connection: +65 us of latency a request,
    +30 us of CPU).
    """

    __slots__ = ("loop", "due", "started", "writes", "busy")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)  # the registry's value must not keep its key alive
        self.due: list[CoalescingTransport] = []
        self.started = False  # a write was made in this pass: its end is scheduled
        self.writes = 0
        self.busy = False

    def at_once(self) -> bool:
        """For a write to a connection holding nothing: whether it leaves now (else it is held to the pass's end)."""
        self.writes += 1
        if self.started:
            return False
        self.started = True
        self.loop().call_soon(self.end)  # type: ignore[union-attr]
        return not self.busy

    def hold(self, transport: CoalescingTransport) -> None:
        self.due.append(transport)

    def end(self) -> None:
        self.started, self.busy, self.writes = False, self.writes > 1, 0
        due, self.due = self.due, []
        for transport in due:
            try:
                transport.flush()
            except Exception:  # one broken connection must not keep the others' bytes back
                log.exception("a held write could not be sent; the connection is closed")
                transport.abort()


_passes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pass] = weakref.WeakKeyDictionary()


def _pass_of(loop: asyncio.AbstractEventLoop) -> _Pass:
    found = _passes.get(loop)
    if found is None:
        found = _passes[loop] = _Pass(loop)
    return found


class CoalescingTransport:
    """An `asyncio.Transport` whose writes, while its loop is busy, leave together at the end of the pass."""

    __slots__ = ("transport", "_pass", "_held", "_held_bytes")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._pass = _pass_of(loop)
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= FLUSH_AT:
            self.flush()
            self.transport.write(data)
            return
        held = self._held
        if held is None:
            if self._pass.at_once():
                self.transport.write(data)
                return
            self._held = [data if type(data) is bytes else bytes(data)]  # the caller may reuse its buffer
            self._held_bytes = len(data)
            self._pass.hold(self)
            return
        held.append(data if type(data) is bytes else bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_AT:
            self.flush()

    def write_now(self, data: bytes) -> None:
        """Write at once, unless bytes are held (then after them, in order).

        For a piece of a piped stream: each comes from its own read of the upstream, and the
        pass's bookkeeping costs more than it saves there (measured side by side, 16 streams
        of an event a millisecond: 1.4-4 % more CPU an event than without coalescing this
        way, 6-13 % through `write`).
        """
        if self._held is None:
            self.transport.write(data)
        else:
            self.write(data)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send what is held now (the end of the pass calls it)."""
        held, self._held = self._held, None
        if held and not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = None
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + (self._held_bytes if self._held else 0)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # the rest of the transport's interface, as it is
        return getattr(self.transport, name)
