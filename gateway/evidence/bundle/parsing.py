"""Strict readers for a bundle's JSON members, which may be forged: any malformation is `Malformed`.

The message of a `Malformed` is the reason the verifier reports, so each reader names
what it expected ("proof holds 'xyz', not a 64-digit hex hash").
"""

from __future__ import annotations

import json
from typing import Any


class Malformed(Exception):
    """One check of the bundle failed; the message is the reason."""


def loads(data: bytes, what: str = "line") -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Malformed(f"{what} is not valid UTF-8 JSON ({type(exc).__name__})") from None


def comparable_json(obj: object) -> bytes | None:
    """Sorted, compact JSON, to compare two parsed documents; None when `obj` cannot be JSON."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError):
        return None


def hashes(value: object, what: str = "proof") -> list[bytes]:
    if not isinstance(value, list):
        raise Malformed(f"{what} is not a list")
    out = []
    for h in value:
        if not is_sha256(h):
            raise Malformed(f"{what} holds {h!r:.70}, not a 64-digit hex hash")
        out.append(bytes.fromhex(h))
    return out


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def jsonl_lines(data: bytes) -> tuple[list[bytes], bool]:
    """The lines of a JSON-lines member, and whether it ends with a newline."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
        return lines, True
    return lines, False
