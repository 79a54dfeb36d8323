"""The data plane: one request, one way through the stages.

identify the caller -> resolve the model and version -> integrity gate -> oversight plan
-> forward -> hold or release -> record -> observe.

Each stage is an object the wiring hands in (`gateway.proxy.stages` says what each must
do); the data plane only orders them. Pure ASGI: no framework objects per request,
headers stay as bytes, the body is parsed only where routing needs it (`/v1`, by the
body's `model`) and kept only when the plan says a ticket or a record needs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from gateway.config import Limits
from gateway.failures import INTERNAL, failure_of
from gateway.oversight.plan import AUTO, SAMPLED, Plan
from gateway.proxy import answers
from gateway.proxy.body import ClientGone, declared_length, first_part, read_body, stream_rest, too_large
from gateway.proxy.exchange import Exchange, request_id_from
from gateway.proxy.forward import forward, upstream_failure
from gateway.proxy.headers import header_value
from gateway.proxy.hold import Holding
from gateway.proxy.inflight import UPSTREAM, InFlight
from gateway.proxy.resolve import Resolver, forwarded_path, read_v1, split_model_path
from gateway.proxy.stages import Callers, Observer, Planning, Recording, ServingGate
from gateway.upstream import UpstreamError

log = logging.getLogger("gateway.proxy")


class DataPlane:
    def __init__(self, *, callers: Callers, resolver: Resolver, gate: ServingGate, planner: Planning,
                 holding: Holding, recording: Recording, observers: Sequence[Observer], inflight: InFlight,
                 limits: Limits, tracing: Any = None) -> None:
        self.callers = callers
        self.resolver = resolver
        self.gate = gate
        self.planner = planner
        self.holding = holding
        self.recording = recording
        self.observers = tuple(observers)
        self.inflight = inflight
        self.limit = limits.max_body_bytes
        self.buffer_limit = limits.max_response_buffer_bytes
        self.tracing = tracing  # gateway.tracing.Tracing, or None (off: no span is made, not even a no-op one)

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        ex = Exchange(request_id_from(headers))
        if not scope["path"].startswith("/models/"):
            ex.api = "openai"  # from the start, so every error on a /v1 route has the OpenAI shape
        client = scope.get("client")
        if client:
            ex.client_addr = client[0]
        if self.tracing is not None:
            self.tracing.begin(ex, headers, scope["method"])
        task = asyncio.current_task()
        watcher: Any = None
        try:
            ex.caller = self.callers.identify(header_value(headers, b"authorization"))
            ex.caller.require("client")
            route, body = await self._resolve(scope, headers, receive, ex)
            self.gate.check(ex.model, ex.version)
            plan = self.planner.plan(ex.model, ex.level)
            if plan.captures and not isinstance(body, bytes):
                body = b"".join([piece async for piece in body])
            if isinstance(body, bytes):
                watcher = _watch_disconnect(scope, receive, task, ex)
                ex.request_body = body  # a reference: a ticket, a record or a raised level may need it
            self.inflight.enter(ex)
            await self._serve(scope, headers, ex, plan, route, body, send, task)
        except ClientGone:
            ex.disconnected = True
        except UpstreamError as exc:  # the answer broke off while it was read (or a raised level ended it)
            log.warning("upstream answer broke off: %s", exc, extra={"request_id": ex.request_id.decode()})
            failure = upstream_failure(exc, ex)
            if ex.sent_start:
                ex.error_type = f"upstream_{exc.kind}"  # it ends without its last message: no client takes it for whole
            else:
                await self._fail(failure, ex, send)
        except asyncio.CancelledError:
            if not ex.disconnected:
                raise
            task.uncancel()  # type: ignore[union-attr]
        except Exception as exc:
            await self._fail(exc, ex, send)
        finally:
            ex.finished = True
            self.inflight.leave(ex)
            if watcher is not None:
                watcher.cancel()
            for observer in self.observers:
                observer.observe(ex)

    async def _serve(self, scope, headers, ex: Exchange, plan: Plan, route, body, send, task) -> None:
        """The stages after the plan: hold, or forward and then hold, release or relay."""
        if (plan.buffers or not plan.call_model) and await self.holding.join_twin(headers, ex, plan, send):
            return  # a retry of a held request: it waits on its ticket, the model is not asked again
        if ex.raised_to is not None:  # raised (or the state was lost) while the twin was looked up: plan again
            ex.level, ex.raised_to = ex.raised_to, None
            plan = self.planner.plan(ex.model, ex.level)
        if not plan.call_model:
            await self.holding.human_task(headers, ex, plan, send)
            return
        ex.phase, ex.stop = UPSTREAM, task.cancel
        try:
            response = await forward(route, ex, headers, body, scheme=scope.get("scheme", "http").encode())
        except asyncio.CancelledError:
            if ex.raised_to is None or ex.disconnected:
                raise
            task.uncancel()  # paused while the model answered: the call is abandoned, a human answers
            await self.holding.raised(headers, ex, None, None, send)
            return
        finally:
            ex.phase = ex.stop = None
        if ex.raised_to is not None:  # raised while the model answered: what it says is planned again
            await self.holding.raised(headers, ex, response, None, send)
            return
        if plan.buffers and response.status < 400:
            await self.holding.hold_or_release(headers, ex, plan, response, send)
            return
        ex.route = SAMPLED if plan.sampled else AUTO
        try:
            await answers.relay(response, ex, send, capture=plan.captures, capture_limit=self.buffer_limit,
                                recorded=plan.record, on_complete=lambda: self.recording.record(ex, plan, headers),
                                pieces=_server_cycle(scope, "piece_writer"))
        except answers.Interrupted as stopped:  # raised just before the answer started
            await self.holding.raised(headers, ex, response, stopped, send)
            return
        if plan.sampled:
            self.holding.sample(ex)

    async def _fail(self, exc: Exception, ex: Exchange, send) -> None:
        """An expected failure answers in the JSON error shape; a defect too, with its traceback in the log."""
        failure = failure_of(exc)
        rid = {"request_id": ex.request_id.decode()}
        if failure is None:
            failure = INTERNAL
            ex.error_type = "internal"
            log.exception("unexpected failure on the data plane", extra=rid)
        elif failure.type == "evidence_unavailable":
            log.error("cannot record evidence: %s", exc, extra=rid)
        if not ex.sent_start:
            await answers.send_error(send, ex, failure.status, failure.type, failure.message, failure.detail,
                                     param=failure.param, code=failure.code)
        # else: the answer started; it ends without its last message, so no client takes it for complete

    async def _resolve(self, scope, headers, receive, ex: Exchange):
        """Which model (from the path or the body), its active version and its effective level."""
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        ex.method = scope["method"]
        length = declared_length(headers)
        if length is not None and length > self.limit:
            raise too_large(self.limit)
        if path.startswith("/models/"):
            name, target = split_model_path(raw_path, self.resolver.catalog.models)
            ex.model = self.resolver.known(name)
            first, more = await first_part(receive)
            if not more and len(first) > self.limit:
                raise too_large(self.limit)
            body = stream_rest(first, receive, self.limit) if more else first
        else:  # /v1/...: the JSON body names the model
            target = forwarded_path(raw_path)
            body = await read_body(receive, self.limit)
            v1 = read_v1(body, header_value(headers, b"content-type"))
            ex.model, ex.stream, ex.v1 = self.resolver.known(v1.model), v1.stream, v1
        ex.target = target + b"?" + query if query else target
        route, ex.level = self.resolver.active_route(ex.model)
        ex.version = route.name
        return route, body


def _watch_disconnect(scope, receive, task, ex: Exchange):
    """Cancel the request's task when its client goes away, which aborts the upstream call.

    The gateway's own server calls back (its cycle's `when_gone`, see `gateway.serving`); under
    any other ASGI server a task waits for the `http.disconnect` message. Either way the
    result has a `cancel()` that ends the watch.
    """

    def gone() -> None:
        if not ex.finished:
            ex.disconnected = True
            task.cancel()

    when_gone = _server_cycle(scope, "when_gone")
    if when_gone is not None:
        when_gone(gone)
        return _Unwatch(when_gone)
    return asyncio.get_running_loop().create_task(_await_disconnect(receive, gone))


def _server_cycle(scope, method: str):
    """A method of the gateway's own server cycle for this request (`gateway.serving`), or None under another server."""
    ref = scope.get("extensions", {}).get("gateway.cycle")  # a weak reference: the cycle holds the scope
    cycle = ref() if ref is not None else None
    return getattr(cycle, method) if cycle is not None else None


class _Unwatch:
    __slots__ = ("when_gone",)

    def __init__(self, when_gone) -> None:
        self.when_gone = when_gone

    def cancel(self) -> None:
        self.when_gone(None)


async def _await_disconnect(receive, gone) -> None:
    if (await receive())["type"] == "http.disconnect":
        gone()
