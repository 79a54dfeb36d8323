"""A ticket as a domain expert reads it, not as its wire format.

A chat request becomes its conversation (system, user, assistant turns), an OpenAI answer
(whole or a buffered stream) the assistant's text; for a generic JSON model, the policy's
`review_fields` name the values a reviewer decides, and `apply_fields` writes the chosen
values into the model's answer, which then is the override.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from gateway.errors import BadRequest
from gateway.oversight.confidence import resolve_pointer, sse_events


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts (text parts joined; others named)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
            else:
                parts.append(str(part))
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False)


def conversation(body: bytes) -> list[dict[str, str]] | None:
    """The turns of a chat (or legacy completions) request, or None when it is not one."""
    doc = _json(body)
    if not isinstance(doc, dict):
        return None
    messages = doc.get("messages")
    if isinstance(messages, list) and messages:
        turns = []
        for message in messages:
            if not isinstance(message, dict):
                return None
            text = _content_text(message.get("content"))
            if message.get("tool_calls"):
                calls = ", ".join(str((c.get("function") or {}).get("name", "?")) for c in message["tool_calls"]
                                  if isinstance(c, dict))
                text = (text + "\n" if text else "") + f"[calls tools: {calls}]"
            turns.append({"role": str(message.get("role", "user")), "content": text})
        return turns
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return [{"role": "user", "content": "\n".join(prompt)}]
    return None


def answer_text(body: bytes) -> str | None:
    """The assistant's text in an OpenAI answer (a completion, or a buffered stream assembled), or None."""
    stripped = body.lstrip()
    if stripped.startswith((b"data:", b":", b"event:")):
        pieces, seen = [], False
        for event in sse_events(body):
            for choice in (event.get("choices") or []) if isinstance(event, dict) else []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(piece, str):
                    pieces.append(piece)
                    seen = True
        return "".join(pieces) if seen else None
    doc = _json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list) or not doc["choices"]:
        return None
    choice = doc["choices"][0]
    if not isinstance(choice, dict):
        return None
    if isinstance(choice.get("message"), dict):
        return _content_text(choice["message"].get("content"))
    text = choice.get("text")
    return text if isinstance(text, str) else None


def field_values(fields: tuple[Any, ...], body: bytes | None) -> list[dict[str, Any]]:
    """The policy's review fields with the model's values (None when its answer lacks one)."""
    doc = _json(body) if body else None
    shown = []
    for i, f in enumerate(fields):
        try:
            current = resolve_pointer(doc, f.pointer) if doc is not None else None
        except (KeyError, IndexError, ValueError, TypeError):
            current = None
        options = [{"value": json.dumps(v), "label": str(v), "selected": v == current} for v in (f.values or ())]
        shown.append({"name": f"field.{i}", "id": f"review-field-{i}", "pointer": f.pointer, "label": f.label or f.pointer,
                      "options": options, "current": "" if current is None else
                      current if isinstance(current, str) else json.dumps(current)})
    return shown


def _set(doc: Any, pointer: str, value: Any) -> Any:
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    if doc is None:
        doc = {}
    node = doc
    for n, token in enumerate(tokens):
        last = n == len(tokens) - 1
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                raise BadRequest(f"the answer has no {pointer}")
            index = int(token)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[token] = value
            else:
                node = node.setdefault(token, {})
        else:
            raise BadRequest(f"the answer has no {pointer}")
    return doc


def apply_fields(fields: tuple[Any, ...], body: bytes | None, chosen: dict[int, str]) -> Any:
    """The model's answer (or `{}` when there is none) with each review field set to the reviewer's value."""
    doc = _json(body) if body else None
    doc = copy.deepcopy(doc) if isinstance(doc, (dict, list)) else {}
    for i, f in enumerate(fields):
        if i not in chosen:
            continue
        raw = chosen[i]
        if f.values:
            try:
                value = json.loads(raw)
            except ValueError:
                value = object()
            if not any(type(v) is type(value) and v == value for v in f.values):
                raise BadRequest(f"{f.label or f.pointer} must be one of {', '.join(map(str, f.values))} (got {raw!r})")
        else:
            value = raw
        doc = _set(doc, f.pointer, value)
    return doc
