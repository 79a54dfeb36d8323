"""Reading a model's confidence from its answer, as the model's policy says.

Sources: a JSON pointer into the body (RFC 6901), a response header, or OpenAI logprobs
(the geometric mean of the token probabilities, from a whole answer or a buffered
stream). Anything missing, unreadable or outside [0, 1] gives None: the caller treats an
unknown confidence as too low.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.policy import ConfidenceSource

# Compare at this precision, so exp(mean(log 0.8)) == 0.8 for the threshold.
_DIGITS = 9


def read_confidence(source: ConfidenceSource, headers: list[tuple[bytes, bytes]], body: bytes) -> float | None:
    try:
        if source.source == "header":
            value = _header(headers, source.header or "")
        elif source.source == "json_pointer":
            value = resolve_pointer(_json_or_events(body), source.pointer or "")
        else:
            value = logprob_confidence(body)
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return None
    return _unit(value)


def meets(confidence: float | None, threshold: float) -> bool:
    return confidence is not None and round(confidence, _DIGITS) >= round(threshold, _DIGITS)


def _unit(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        return None
    return number


def _header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in headers:
        if key == wanted:
            return value.decode("latin-1").strip()
    return None


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901: `/a/0/b`, with `~1` for '/' and `~0` for '~'."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer starts with /")
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, list):
            doc = doc[int(token)]
        elif isinstance(doc, dict):
            doc = doc[token]
        else:
            raise KeyError(token)
    return doc


def sse_events(body: bytes) -> list[Any]:
    """The JSON `data:` events of a buffered server-sent-events answer."""
    events = []
    for line in body.split(b"\n"):
        line = line.strip()
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                events.append(json.loads(data))
    return events


def _json_or_events(body: bytes) -> Any:
    """A JSON body, or for a buffered stream the last event (where summaries usually are)."""
    stripped = body.lstrip()
    if stripped.startswith(b"data:"):
        events = sse_events(body)
        if not events:
            raise ValueError("no events")
        return events[-1]
    return json.loads(body)


def logprob_confidence(body: bytes) -> float | None:
    """Geometric mean of token probabilities = exp(mean(logprob)), over every choice-0 token."""
    stripped = body.lstrip()
    docs = sse_events(body) if stripped.startswith(b"data:") else [json.loads(body)]
    logprobs: list[float] = []
    for doc in docs:
        choices = doc.get("choices") or []
        if not choices:
            continue
        choice = choices[0]
        lp = choice.get("logprobs") or {}
        if isinstance(lp.get("content"), list):  # chat completions
            logprobs.extend(float(t["logprob"]) for t in lp["content"])
        elif isinstance(lp.get("token_logprobs"), list):  # legacy completions
            logprobs.extend(float(x) for x in lp["token_logprobs"] if x is not None)
    if not logprobs:
        return None
    return math.exp(sum(logprobs) / len(logprobs))
