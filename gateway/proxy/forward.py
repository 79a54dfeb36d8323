"""Forward: the request goes to the active version's upstream over its keep-alive pool.

The caller's own credentials never travel upstream: `upstream_request_headers` drops
them and adds the version's configured headers. An upstream that cannot be reached or
does not answer in time is a 502 or 504 to the client; what it answers, it answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import perf_counter

from gateway.catalog import VersionRoute
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from gateway.proxy.exchange import Exchange
from gateway.proxy.headers import upstream_request_headers
from gateway.proxy.names import RenamedAnswer, identity_coding, upstream_body
from gateway.proxy.stages import Answer
from gateway.upstream import UpstreamError


async def forward(route: VersionRoute, ex: Exchange, client_headers: list[tuple[bytes, bytes]],
                  body: bytes | AsyncIterator[bytes], *, scheme: bytes) -> Answer:
    """Send the request upstream; returns once the answer's status and headers arrived."""
    headers = upstream_request_headers(client_headers, request_id=ex.request_id, client_addr=ex.client_addr.encode(),
                                       scheme=scheme, extra=route.extra_headers)
    if ex.trace_headers is not None:  # traced: the upstream's parent is this exchange's span, not the client's
        headers = [h for h in headers if h[0] != b"traceparent" and h[0] != b"tracestate"] + ex.trace_headers
    renamed = route.served_name is not None and ex.v1 is not None and isinstance(body, bytes)
    if renamed:  # the upstream serves this model under another name
        body = upstream_body(body, ex.v1, route.served_name)  # type: ignore[arg-type]
        headers = identity_coding(headers)
    sent = perf_counter()
    try:
        response = await route.pool.request(ex.method.encode(), ex.target, headers, body)
    except UpstreamError as exc:
        raise upstream_failure(exc, ex) from None
    ex.upstream_seconds = perf_counter() - sent
    return RenamedAnswer(response, route.served_name, ex.model) if renamed else response  # type: ignore[arg-type]


def upstream_failure(exc: UpstreamError, ex: Exchange) -> GatewayError:
    """What the client is told when the upstream gave no usable answer (before the answer started)."""
    ex.upstream_error = exc.kind
    where = f"upstream of {ex.model}/{ex.version}"
    if exc.kind == "timeout":
        return UpstreamTimeout(f"{where} did not answer in time")
    if exc.kind == "busy":
        return GatewayError(f"{where}: {exc}; retry later", status=503, type="upstream_busy")
    return UpstreamUnreachable(f"{where}: {exc}")
