"""The data plane: one request, one way through the stages.

identify the caller -> resolve the model and version -> integrity gate -> oversight plan
-> forward -> hold or release -> record -> observe.

Pure ASGI: no framework objects per request, headers stay as bytes, the body is parsed
only where routing needs it (`/v1`, by the body's `model`) and copied only to hold it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound, UpstreamTimeout, UpstreamUnreachable, error_body
from gateway.proxy.body import ClientGone, declared_length, first_part, read_body, stream_rest, too_large
from gateway.proxy.headers import client_response_headers, upstream_request_headers
from gateway.proxy.upstream import UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    from gateway.context import Gateway
    from gateway.models import VersionRoute

log = logging.getLogger("gateway.proxy")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_JSON = [(b"content-type", b"application/json")]


class Exchange:
    """What the stages learn about one request, for the answer's headers, metrics and records."""

    __slots__ = (
        "request_id", "started", "caller", "model", "version", "level", "route", "status",
        "upstream_seconds", "disconnected", "finished", "error_type",
    )

    def __init__(self, request_id: bytes, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.caller = None
        self.model = ""
        self.version = ""
        self.level = -1
        self.route = "auto"
        self.status = 0
        self.upstream_seconds = 0.0
        self.disconnected = False
        self.finished = False
        self.error_type: str | None = None

    def gateway_headers(self, upstream_seconds: float) -> list[tuple[bytes, bytes]]:
        overhead = perf_counter() - self.started - upstream_seconds
        headers = [(b"x-request-id", self.request_id)]
        if self.version:
            headers.append((b"x-model-version", self.version.encode()))
        if self.level >= 0:
            headers.append((b"x-oversight-level", b"%d" % self.level))
            headers.append((b"x-oversight-route", self.route.encode()))
        headers.append((b"x-gateway-overhead-ms", b"%.3f" % (overhead * 1000)))
        return headers


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return value
    return os.urandom(12).hex().encode()


class DataPlane:
    def __init__(self, gateway: "Gateway") -> None:
        self.gw = gateway
        self.limit = gateway.config.limits.max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        ex = Exchange(_request_id(headers), perf_counter())
        task = asyncio.current_task()
        watcher: asyncio.Task[None] | None = None
        try:
            ex.caller = self.gw.tokens.identify(_header(headers, b"authorization"))
            if not ex.caller.has("client"):
                raise Forbidden(f"token {ex.caller.id!r} has role {ex.caller.role!r}; model traffic needs a client token")
            route, target, body = await self._resolve(scope, headers, receive, ex)
            if isinstance(body, bytes):
                watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, ex))
            await self._forward(scope, headers, route, target, body, ex, send)
        except GatewayError as exc:
            await self._send_error(send, ex, exc.status, exc.type, exc.message, exc.detail)
        except ClientGone:
            ex.disconnected = True
        except asyncio.CancelledError:
            if not ex.disconnected:
                raise
            task.uncancel()  # type: ignore[union-attr]
        finally:
            ex.finished = True
            if watcher is not None and not watcher.done():
                watcher.cancel()
            self._observe(ex)

    # resolve the model and version --------------------------------------------------
    async def _resolve(self, scope, headers, receive, ex: Exchange):
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        length = declared_length(headers)
        if length is not None and length > self.limit:
            raise too_large(self.limit)
        if path.startswith("/models/"):
            name, _, rest = path[len("/models/") :].partition("/")
            model = self._model(name, ex)
            prefix = len("/models/") + len(name)
            target = raw_path[prefix:] or b"/"
            first, more = await first_part(receive)
            body = stream_rest(first, receive, self.limit) if more else first
            if not more and len(first) > self.limit:
                raise too_large(self.limit)
        else:  # /v1/...: the JSON body names the model
            target = raw_path
            body = await read_body(receive, self.limit)
            name = _model_field(body)
            model = self._model(name, ex)
        if query:
            target = target + b"?" + query
        version = self.gw.state.active.get(model)
        route = self.gw.catalog.models[model].versions.get(version) if version else None
        if route is None:
            raise GatewayError(f"model {model!r} has no active version that this replica can reach", status=503, type="unavailable")
        ex.version = route.name
        ex.level = self.gw.state.level_for(model)
        return route, target, body

    def _model(self, name: str, ex: Exchange) -> str:
        if name not in self.gw.catalog.models:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(sorted(self.gw.catalog.models))}")
        ex.model = name
        return name

    # forward and answer ---------------------------------------------------------
    async def _forward(self, scope, headers, route: "VersionRoute", target: bytes, body, ex: Exchange, send) -> None:
        client = scope.get("client")
        upstream_headers = upstream_request_headers(
            headers,
            request_id=ex.request_id,
            client_addr=client[0].encode() if client else b"unknown",
            scheme=scope.get("scheme", "http").encode(),
            extra=route.extra_headers,
        )
        sent = perf_counter()
        try:
            response = await route.pool.request(scope["method"].encode(), target, upstream_headers, body)
        except UpstreamError as exc:
            self.gw.metrics.upstream_error(ex.model, ex.version, exc.kind)
            if exc.kind == "timeout":
                raise UpstreamTimeout(f"upstream of {ex.model}/{ex.version} did not answer in time") from None
            raise UpstreamUnreachable(f"upstream of {ex.model}/{ex.version}: {exc}") from None
        ex.upstream_seconds = perf_counter() - sent
        if response.status >= 500:
            self.gw.metrics.upstream_error(ex.model, ex.version, "5xx")
        await self._relay(response, ex, send)

    async def _relay(self, response: UpstreamResponse, ex: Exchange, send) -> None:
        """Pass the answer through: in one piece if it is already here, else chunk by chunk."""
        ex.status = response.status
        start = {
            "type": "http.response.start",
            "status": response.status,
            "headers": client_response_headers(response.headers, keep_length=True) + ex.gateway_headers(ex.upstream_seconds),
        }
        if response.complete:
            body = response.take_body()
            await send(start)
            ex.finished = True
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await send(start)
            while chunk := await response.read_chunk():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            self.gw.metrics.upstream_error(ex.model, ex.version, exc.kind)
            ex.error_type = f"upstream_{exc.kind}"
            log.warning("upstream answer broke off", extra={"request_id": ex.request_id.decode(), "error": str(exc)})
            return  # the client sees a truncated answer, never a clean end
        finally:
            response.release()
        ex.finished = True
        await send({"type": "http.response.body", "body": b""})

    async def _send_error(self, send, ex: Exchange, status: int, type: str, message: str, detail=None) -> None:
        ex.status = status
        ex.error_type = type
        body = error_body(type, message, ex.request_id.decode(), detail)
        headers = _JSON + [(b"content-length", b"%d" % len(body))] + ex.gateway_headers(0.0)
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="gateway"'))
        ex.finished = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # observe ---------------------------------------------------------------------
    def _observe(self, ex: Exchange) -> None:
        elapsed = perf_counter() - ex.started
        status = ex.status if not ex.disconnected else 499
        self.gw.metrics.observe(ex.model or "-", ex.version or "-", status, ex.route, elapsed, elapsed - ex.upstream_seconds)
        if self.gw.access_log:
            self.gw.access_log.info(
                "request",
                extra={
                    "request_id": ex.request_id.decode(),
                    "caller": ex.caller.id if ex.caller else None,
                    "model": ex.model or None,
                    "version": ex.version or None,
                    "oversight_level": ex.level if ex.level >= 0 else None,
                    "route": ex.route,
                    "status": status,
                    "ms": round(elapsed * 1000, 3),
                    "error": ex.error_type,
                },
            )


async def _watch_disconnect(receive, task, ex: Exchange) -> None:
    """Cancel the request's task when its client goes away, which aborts the upstream call."""
    message = await receive()
    if message["type"] == "http.disconnect" and not ex.finished:
        ex.disconnected = True
        task.cancel()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _model_field(body: bytes) -> str:
    if not body:
        raise BadRequest("a /v1 request needs a JSON body with a `model` field")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON; /v1 routes are routed by the body's `model` field") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str) or not model:
        raise BadRequest("the JSON body has no `model` string; /v1 routes are routed by it")
    return model
