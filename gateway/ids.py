"""Random identifiers from the OS's CSPRNG, drawn in blocks.

A `getrandom` call per request costs a system call (and a trip through the GIL) on the
request path; one call per few hundred ids costs nothing noticeable. Ids stay
unguessable: a ticket id is what lets a client read its decision.
"""

from __future__ import annotations

import os

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
