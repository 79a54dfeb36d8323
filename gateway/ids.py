"""Identifiers: random ones from the OS's CSPRNG, drawn in blocks, and time-ordered request ids.

A `getrandom` call per request costs a system call (and a trip through the GIL) on the
request path; one call per few hundred ids costs nothing noticeable. Ids stay
unguessable: a ticket id is what lets a client read its decision. Ids that are keys of a
growing B-tree (request ids in the evidence index, ticket ids in the store) start with the
time, so each insert lands at the tree's right edge instead of on a random page.
"""

from __future__ import annotations

import os
import time

_BLOCK = 4096
_buffer = b""
_offset = 0


def random_bytes(n: int) -> bytes:
    global _buffer, _offset
    if _offset + n > len(_buffer):
        _buffer, _offset = os.urandom(_BLOCK), 0
    out = _buffer[_offset:_offset + n]
    _offset += n
    return out


def random_hex(n: int) -> str:
    return random_bytes(n).hex()


def _now_ms() -> str:
    """The time in milliseconds, 12 hex digits: a prefix that makes ids sort by when they were made."""
    return (int(time.time() * 1000) & 0xFFFFFFFFFFFF).to_bytes(6, "big").hex()


def ordered_secret(random_size: int) -> str:
    """The time in milliseconds (12 hex digits), then `random_size` random bytes: unguessable, yet sorted by time.

    What the random part makes unguessable stays so (a ticket id keeps its 80 random bits);
    the prefix only tells when the id was made, which whoever holds it can read anyway.
    """
    return _now_ms() + random_bytes(random_size).hex()


def request_id() -> str:
    """24 hex digits: the time in milliseconds (6 bytes), then 6 random bytes.

    Ids made at about the same time sort together, so the evidence index's request-id
    B-tree grows at its right edge instead of touching a random page per record (measured:
    about 5 us a record instead of 12-22 us, growing with the index). A request id names a
    request in logs and evidence; it grants nothing (a ticket id does: `ordered_secret`).
    """
    return _now_ms() + random_bytes(6).hex()
