"""Request and response bodies in JSON: text when the bytes are UTF-8, else base64.

A body packs to `{"body": str, "body_encoding": "utf-8" | "base64"}`, which is how review
tickets, the evidence API and bundles' decrypted-bodies.jsonl carry bytes in JSON.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping


def pack_body(body: bytes) -> dict[str, str]:
    """Bodies as text when they are text (readable in the console), else base64."""
    try:
        return {"body": body.decode("utf-8"), "body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}


def unpack_body(part: Mapping[str, Any]) -> bytes:
    """The bytes `pack_body` packed; lenient, for bodies this gateway wrote itself."""
    if part.get("body_encoding") == "base64":
        return base64.b64decode(part["body"])
    return str(part.get("body", "")).encode("utf-8")


def unpack_untrusted_body(part: object) -> bytes:
    """`unpack_body` for input that may be forged: anything but a well-formed packed body is a ValueError.

    The message says what is wrong, worded to follow the body's name ("body 'request' is not base64").
    """
    if not isinstance(part, dict) or not isinstance(part.get("body"), str):
        raise ValueError('is not an object with a text "body"')
    encoding = part.get("body_encoding")
    if encoding == "utf-8":
        try:
            return part["body"].encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise ValueError("is not valid UTF-8") from None
    if encoding == "base64":
        try:
            return base64.b64decode(part["body"].encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise ValueError("is not base64") from None
    raise ValueError(f"has body_encoding {encoding!r}, not utf-8 or base64")
