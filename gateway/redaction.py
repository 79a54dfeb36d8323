"""What never leaves the gateway: secrets are replaced before a ticket, a record or an export holds them.

Headers the policy lists (Authorization, Cookie, ...) keep their names and lose their
values; body fields named by JSON pointer (RFC 6901) are replaced in JSON bodies. Tickets,
evidence records and exports all redact through here, so they agree on what is hidden.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config

REDACTED = "[redacted]"


def header_names(names: Iterable[str]) -> frozenset[bytes]:
    """Policy header names as the request path compares them (lower-case bytes)."""
    return frozenset(name.lower().encode("latin-1") for name in names)


def redact_headers(headers: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> list[list[str]]:
    """Headers as text pairs, the values of `names` replaced: tokens never reach a ticket or a record."""
    return [[k.decode("latin-1"), REDACTED if k in names else v.decode("latin-1")] for k, v in headers]


def redact_body(body: bytes, pointers: tuple[str, ...]) -> bytes:
    """Replace the fields at `pointers` in a JSON body; other bodies pass unchanged."""
    if not pointers or not body:
        return body
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body
    changed = False
    for pointer in pointers:
        changed |= _redact(doc, pointer)
    return json.dumps(doc, separators=(",", ":")).encode() if changed else body


def _redact(doc: Any, pointer: str) -> bool:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")] if pointer else []
    if not parts:
        return False
    target = doc
    for part in parts[:-1]:
        try:
            target = target[int(part)] if isinstance(target, list) else target[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return False
    last = parts[-1]
    if isinstance(target, dict) and last in target:
        target[last] = REDACTED
        return True
    if isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = REDACTED
        return True
    return False


def scrubbed_config(config: Config) -> dict[str, Any]:
    """The config as it runs, minus anything secret: upstream credentials, keys, token hashes.

    Evidence exports (config.yaml in a bundle) and `gateway config show` both print this.
    """
    data = config.model_dump(mode="json", exclude={"source"})
    data["tokens"] = [{"id": t["id"], "role": t.get("role"), "roles": t.get("roles")} for t in data.get("tokens", [])]
    for model in data.get("models", {}).values():
        for version in model.get("versions", {}).values():
            version["headers"] = {name: REDACTED for name in version.get("headers", {})}
            if version.get("upstream"):
                version["upstream"] = _without_userinfo(version["upstream"])
            version["upstreams"] = [_without_userinfo(url) for url in version.get("upstreams") or []]
    for target in data.get("notifications") or []:  # webhook credentials: headers, PagerDuty keys, Slack-style URLs
        target["headers"] = {name: REDACTED for name in target.get("headers") or {}}
        if target.get("routing_key"):
            target["routing_key"] = REDACTED
        scheme, _, rest = str(target.get("url", "")).partition("://")
        target["url"] = _without_userinfo(f"{scheme}://{rest.split('/', 1)[0]}") + f"/{REDACTED}" if rest else REDACTED
    data["store"] = _without_userinfo(data.get("store", "embedded"))  # redis://user:password@host
    evidence = data.get("evidence", {})
    if evidence.get("encryption_key"):
        evidence["encryption_key"] = REDACTED
    evidence["previous_keys"] = {kid: REDACTED for kid in evidence.get("previous_keys", {})}
    return data


def _without_userinfo(url: str) -> str:
    """A URL with any `user:password@` replaced: credentials written into an upstream or store URL."""
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://{REDACTED}@{authority.rpartition('@')[2]}{slash}{path}"
