"""Header rewriting on both hops (RFC 9110 section 7.6.1: hop-by-hop fields stay on their hop).

The caller's gateway token is never passed upstream: upstream credentials come from the
version's configured `headers`.
"""

from __future__ import annotations

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway on the upstream request, whatever the client sent.
_REWRITTEN_UPSTREAM = frozenset({b"host", b"content-length", b"authorization", b"x-request-id", b"expect"})
# Set by the gateway on the answer, whatever the upstream sent: an upstream cannot claim a review that never was.
GATEWAY_RESPONSE_HEADERS = frozenset(
    {b"x-request-id", b"x-model-version", b"x-oversight-level", b"x-oversight-route", b"x-gateway-overhead-ms",
     b"x-decision", b"x-decided-by", b"x-ticket"}
)
# The gateway's server writes its own Date and no Server header.
_SERVER_SET = frozenset({b"date", b"server"})


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Names listed in `Connection:` are hop-by-hop too."""
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            names.update(v.strip().lower() for v in value.split(b","))
    return frozenset(names)


def upstream_request_headers(
    client_headers: list[tuple[bytes, bytes]],
    *,
    request_id: bytes,
    client_addr: bytes,
    scheme: bytes,
    extra: list[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """Client headers minus hop-by-hop and gateway credentials, plus forwarding fields."""
    drop = _HOP_BY_HOP | _REWRITTEN_UPSTREAM
    has_connection = False
    out: list[tuple[bytes, bytes]] = []
    forwarded_for = b""
    for name, value in client_headers:
        if name == b"connection":
            has_connection = True
        if name in drop:
            continue
        if name == b"x-forwarded-for":
            forwarded_for = value
            continue
        if name == b"x-forwarded-proto":
            continue
        out.append((name, value))
    if has_connection:
        listed = _connection_tokens(client_headers)
        out = [(n, v) for n, v in out if n not in listed]
    out.append((b"x-forwarded-for", forwarded_for + b", " + client_addr if forwarded_for else client_addr))
    out.append((b"x-forwarded-proto", scheme))
    out.append((b"x-request-id", request_id))
    out.extend(extra)
    return out


def client_response_headers(upstream_headers: list[tuple[bytes, bytes]], *, keep_length: bool) -> list[tuple[bytes, bytes]]:
    """Upstream headers fit to send to the client (the gateway adds its own after)."""
    listed = _connection_tokens(upstream_headers)
    out = []
    for name, value in upstream_headers:
        name = name.lower()
        if name in _HOP_BY_HOP or name in listed or name in GATEWAY_RESPONSE_HEADERS or name in _SERVER_SET:
            continue
        if name == b"content-length" and not keep_length:
            continue
        out.append((name, value))
    return out


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None
