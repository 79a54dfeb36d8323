"""OpenAI answers the gateway writes itself: a human's text as a completion, any answer as a stream.

A reviewer who overrides (or answers a level-4 task) writes text; an OpenAI client needs
a `chat.completion` (or a legacy `text_completion`). A client that asked for a stream
needs server-sent events, chunk by chunk, ending in `[DONE]`, whatever the answer was
built from. While a human decides, a held stream gets SSE comment lines, which every
SSE client ignores; a refusal ends it with an error event the OpenAI SDKs raise.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.ids import random_hex

DONE = b"data: [DONE]\n\n"
_CHAT_PATH = "/v1/chat/completions"


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def completion_from_text(text: str, *, model: str, path: str) -> dict[str, Any]:
    """A complete answer holding `text`, shaped for the endpoint the client called."""
    created = int(time.time())
    if path.split("?", 1)[0] == _CHAT_PATH or not path.startswith("/v1/completions"):
        return {"id": "chatcmpl-" + random_hex(12), "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    return {"id": "cmpl-" + random_hex(12), "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def is_completion(doc: Any) -> bool:
    """A completion an OpenAI client can read: an object with a non-empty `choices` list."""
    return isinstance(doc, dict) and isinstance(doc.get("choices"), list) and bool(doc["choices"])


def is_event_stream(body: bytes) -> bool:
    return body.lstrip().startswith((b"data:", b":", b"event:"))


def stream_of(completion: dict[str, Any]) -> bytes:
    """A complete answer as the events a streaming client reads: a chunk per choice, then [DONE]."""
    if completion.get("object") == "text_completion":
        events = [{**_head(completion, "text_completion"),
                   "choices": [{"index": c.get("index", i), "text": c.get("text", ""), "logprobs": None,
                                "finish_reason": c.get("finish_reason", "stop")}]}
                  for i, c in enumerate(completion.get("choices") or [])]
    else:
        events = []
        for i, choice in enumerate(completion.get("choices") or []):
            message = choice.get("message") or {}
            index = choice.get("index", i)
            delta = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{**call, "index": n} for n, call in enumerate(message["tool_calls"])]
            events.append({**_head(completion, "chat.completion.chunk"),
                           "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]})
            events.append({**_head(completion, "chat.completion.chunk"),
                           "choices": [{"index": index, "delta": {}, "logprobs": None,
                                        "finish_reason": choice.get("finish_reason") or "stop"}]})
    return b"".join(b"data: " + _encode(event) + b"\n\n" for event in events) + DONE


def _head(completion: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"id": completion.get("id") or "chatcmpl-" + random_hex(12), "object": kind,
            "created": completion.get("created") or int(time.time()), "model": completion.get("model", "")}


def waiting_comment(ticket: str) -> bytes:
    """An SSE comment: keeps a held stream's connection (and every proxy on the way) from timing out."""
    return b": waiting for a human decision on " + ticket.encode() + b"\n\n"


def error_event(error: dict[str, Any]) -> bytes:
    """An SSE event carrying `{"error": {...}}`: the OpenAI SDKs raise it as an APIError."""
    return b"data: " + _encode(error) + b"\n\n"
