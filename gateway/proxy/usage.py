"""Tokens from an OpenAI answer's `usage`, read without parsing the answer.

A byte search for the last `"usage"` key, then only that object is decoded (a few hundred
bytes). Used where the gateway already holds the answer's bytes: a whole answer it relays
or judged, or the last chunks of a stream it relayed (where `stream_options.include_usage`
puts the usage chunk, just before `data: [DONE]`).
"""

from __future__ import annotations

import json

_KEY = b'"usage"'
_MAX_OBJECT = 4096
_decoder = json.JSONDecoder()
_SPACE = b" \t\r\n"


def usage_of(data: bytes) -> tuple[int, int] | None:
    """(input tokens, output tokens), or None when there is no usable `usage` object."""
    at = data.rfind(_KEY)
    while at >= 0:
        i = at + len(_KEY)
        while i < len(data) and data[i] in _SPACE:
            i += 1
        if i < len(data) and data[i] == 58:  # ":"
            i += 1
            while i < len(data) and data[i] in _SPACE:
                i += 1
            if i < len(data) and data[i] == 123:  # "{"
                return _tokens(data[i:i + _MAX_OBJECT])
        at = data.rfind(_KEY, 0, at)  # `"usage": null` (OpenAI stream chunks): look further back
    return None


def _tokens(raw: bytes) -> tuple[int, int] | None:
    try:
        usage, _ = _decoder.raw_decode(raw.decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(usage, dict):
        return None
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    made = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(given, int) or not isinstance(made, int) or isinstance(given, bool) or given < 0 or made < 0:
        return None
    return given, made
