"""What the demo model "thinks": deterministic chat replies and credit decisions.

Everything here is a pure function of the request (and the switches), so the same
input always gets the same answer and tests can predict it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

_TOKEN_RE = re.compile(r"\s*\S+")
_SNIPPET_WORDS = 12


class BadRequest(ValueError):
    """The request body is JSON but not a request this endpoint understands (400)."""


def _digest(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest()


# ---------------------------------------------------------------- chat


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_request(doc: Any) -> tuple[str, int, int | None, bool, bool, bool]:
    """Validate a chat body: (last user text, prompt tokens, max tokens, stream, logprobs, usage in stream)."""
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a non-empty list of message objects")
    last_user = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            last_user = _text_of(message.get("content"))
            break
    prompt_tokens = sum(len(_text_of(m.get("content")).split()) + 1 for m in messages)
    max_tokens = doc.get("max_completion_tokens", doc.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer")
    stream_options = doc.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return last_user, prompt_tokens, max_tokens, doc.get("stream") is True, doc.get("logprobs") is True, include_usage


def reply_tokens(last_user: str, max_tokens: int | None) -> tuple[list[str], str]:
    """The reply as tokens ("".join(tokens) is the content) and the finish reason.

    The reply quotes the first words of the last user message and carries a short
    hash of the whole message, so distinct prompts get distinct replies.
    """
    words = last_user.split()
    if words:
        snippet = " ".join(words[:_SNIPPET_WORDS]) + (" ..." if len(words) > _SNIPPET_WORDS else "")
        content = f'Demo answer {_digest(last_user, 3).hex()}: you said "{snippet}".'
    else:
        content = "Demo answer: there was no user message to answer."
    tokens = _TOKEN_RE.findall(content)
    if max_tokens is not None and max_tokens < len(tokens):
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def token_logprob(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")), "top_logprobs": []}


def logprob_of(confidence: float) -> float:
    """Every token gets this logprob, so the geometric-mean probability is the confidence."""
    return math.log(confidence)


# ---------------------------------------------------------------- credit decisions


def applicant_of(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("applicant"), dict):
        raise BadRequest("request body must be {\"applicant\": {...}}")
    return doc["applicant"]


def applicant_score(applicant: dict[str, Any]) -> float:
    """A uniform number in [0, 1) fixed by the applicant's identity, not by its group.

    The identity is the `id` when there is one (ids 7 and "7" are the same person),
    otherwise every field but `group`. Leaving the group out means changing only an
    applicant's group changes the decision only through `skew`.
    """
    if applicant.get("id") is not None:
        key = "id:" + str(applicant["id"])
    else:
        rest = {k: v for k, v in applicant.items() if k != "group"}
        key = "body:" + json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(_digest(key, 8), "big") / 2.0**64


def decide(applicant: dict[str, Any], approval_rate: float, skew: dict[str, float]) -> tuple[str, Any]:
    """("approve" | "deny", group): approve when the score is below the group's rate."""
    group = applicant.get("group")
    rate = approval_rate if group is None else skew.get(str(group), approval_rate)
    return ("approve" if applicant_score(applicant) < rate else "deny"), group


# ---------------------------------------------------------------- moderation

# Words the demo classifier flags, and the OpenAI moderation category each one stands for.
# The demo's chat answers quote the prompt, so a prompt with one of them yields a flagged answer.
FLAGGED_TERMS = {"harmful": "harassment", "toxic": "hate", "violent": "violence"}
MODERATION_CATEGORIES = ("harassment", "hate", "violence", "self-harm", "sexual")


def moderation_inputs(doc: Any) -> list[str]:
    """The texts of a moderations request: `input` as a string or a list of strings (the OpenAI shape)."""
    if not isinstance(doc, dict) or "input" not in doc:
        raise BadRequest("request body must be {\"input\": text or [texts]}")
    value = doc["input"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("'input' must be a string or a non-empty list of strings")


def moderate(text: str) -> dict[str, Any]:
    """One moderation result in the OpenAI shape: flagged when the text holds one of `FLAGGED_TERMS`."""
    words = {w.strip(".,;:!?\"'()").lower() for w in text.split()}
    hits = {FLAGGED_TERMS[w] for w in words if w in FLAGGED_TERMS}
    return {"flagged": bool(hits), "categories": {c: c in hits for c in MODERATION_CATEGORIES},
            "category_scores": {c: (0.99 if c in hits else 0.01) for c in MODERATION_CATEGORIES}}
