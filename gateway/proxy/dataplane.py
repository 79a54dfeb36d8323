"""The data plane: one request, one way through the stages.

identify the caller -> resolve the model and version -> integrity gate -> oversight plan
-> forward -> hold or release -> record -> observe.

Pure ASGI: no framework objects per request, headers stay as bytes, the body is parsed
only where routing needs it (`/v1`, by the body's `model`) and kept only when the plan
says a ticket or a record needs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway.evidence.recovery import EvidenceLogError
from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound, UpstreamTimeout, UpstreamUnreachable
from gateway.oversight.confidence import meets, read_confidence
from gateway.oversight.plan import AUTO, HELD, HUMAN, SAMPLED, Plan
from gateway.proxy import answers
from gateway.proxy.body import ClientGone, declared_length, first_part, read_body, stream_rest, too_large
from gateway.proxy.exchange import Exchange, request_id_from
from gateway.proxy.headers import client_response_headers, header_value, upstream_request_headers
from gateway.proxy.prefer import parse_prefer
from gateway.proxy.upstream import UpstreamError, UpstreamResponse
from gateway.review.tickets import capture_headers, final_answer, make_ticket, pack_body
from gateway.store import StoreUnavailable

if TYPE_CHECKING:
    from gateway.context import Gateway
    from gateway.models import VersionRoute

log = logging.getLogger("gateway.proxy")


class DataPlane:
    def __init__(self, gateway: "Gateway") -> None:
        self.gw = gateway
        self.limit = gateway.config.limits.max_body_bytes
        self.buffer_limit = gateway.config.limits.max_response_buffer_bytes
        self.streams: dict[str, set[UpstreamResponse]] = {}
        self.recent: dict[tuple[str, str], deque[str]] = {}  # the last request ids each version served
        gateway.state.add_listener(self._on_state_change)
        gateway.dataplane = self

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        ex = Exchange(request_id_from(headers))
        client = scope.get("client")
        if client:
            ex.client_addr = client[0]
        task = asyncio.current_task()
        watcher: asyncio.Task[None] | None = None
        plan: Plan | None = None
        try:
            ex.caller = self.gw.tokens.identify(header_value(headers, b"authorization"))
            if not ex.caller.has("client"):
                raise Forbidden(f"token {ex.caller.id!r} has role {ex.caller.role!r}; model traffic needs a client token")
            route, body = await self._resolve(scope, headers, receive, ex)
            self.gw.integrity_gate(ex.model, ex.version)
            plan = self.gw.plan(ex.model, ex.level, ex.request_id)
            if plan.captures and not isinstance(body, bytes):
                body = b"".join([piece async for piece in body])
            if isinstance(body, bytes):
                watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, ex))
                if plan.captures:
                    ex.request_body = body
            if not plan.call_model:
                ex.route = HUMAN
                await self._hold(headers, ex, plan, send, kind="human", recommendation=None,
                                 reason=f"level {plan.level}: the model is paused; a human decides")
                return
            response = await self._call(scope, headers, route, body, ex)
            if plan.buffers and response.status < 400:
                await self._hold_or_release(headers, ex, plan, response, send)
                return
            ex.route = SAMPLED if plan.sampled else AUTO
            await answers.relay(
                response, ex, send, capture=plan.captures, capture_limit=self.buffer_limit,
                on_complete=lambda: self._record(ex, plan, headers), streams=self.streams.setdefault(ex.model, set()),
            )
            if plan.sampled:
                self._queue_sample(ex)
        except GatewayError as exc:
            await answers.send_error(send, ex, exc.status, exc.type, exc.message, exc.detail)
        except StoreUnavailable:
            await answers.send_error(send, ex, 503, "store_unavailable",
                                     "the oversight store cannot be reached, so this request cannot be queued for a human; retry later")
        except EvidenceLogError as exc:
            log.error("cannot record evidence: %s", exc, extra={"request_id": ex.request_id.decode()})
            if not ex.sent_start:  # nothing was served: say why
                await answers.send_error(send, ex, 503, "evidence_unavailable",
                                         "this decision cannot be recorded as evidence, so it is not served; retry later")
            # else: the stream ends without its last message, so the client never sees a complete answer
        except ClientGone:
            ex.disconnected = True
        except UpstreamError as exc:  # the answer broke off after it started
            self.gw.metrics.upstream_error(ex.model, ex.version, exc.kind)
            ex.error_type = f"upstream_{exc.kind}"
            ex.upstream_error = exc.kind
            log.warning("upstream answer broke off: %s", exc, extra={"request_id": ex.request_id.decode()})
        except asyncio.CancelledError:
            if not ex.disconnected:
                raise
            task.uncancel()  # type: ignore[union-attr]
        except Exception:  # a defect: the client still gets the JSON error shape, the log gets the traceback
            ex.error_type = "internal"
            log.exception("unexpected failure on the data plane", extra={"request_id": ex.request_id.decode()})
            if not ex.sent_start:
                await answers.send_error(send, ex, 500, "internal",
                                         "the gateway failed on this request; its log has the details under this request id")
        finally:
            ex.finished = True
            if watcher is not None and not watcher.done():
                watcher.cancel()
            self._observe(ex)

    # resolve the model and version ---------------------------------------------------
    async def _resolve(self, scope, headers, receive, ex: Exchange):
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        ex.method = scope["method"]
        length = declared_length(headers)
        if length is not None and length > self.limit:
            raise too_large(self.limit)
        if path.startswith("/models/"):
            name = path[len("/models/"):].partition("/")[0]
            self._model(name, ex)
            target = raw_path[len("/models/") + len(name):] or b"/"
            first, more = await first_part(receive)
            if not more and len(first) > self.limit:
                raise too_large(self.limit)
            body = stream_rest(first, receive, self.limit) if more else first
        else:  # /v1/...: the JSON body names the model
            target = raw_path
            body = await read_body(receive, self.limit)
            self._model(_model_field(body), ex)
        ex.target = target + b"?" + query if query else target
        version = self.gw.state.active.get(ex.model)
        route = self.gw.catalog.models[ex.model].versions.get(version) if version else None
        if route is None:
            raise GatewayError(f"model {ex.model!r} has no active version this replica can reach", status=503, type="unavailable")
        ex.version = route.name
        ex.level = self.gw.state.level_for(ex.model)
        return route, body

    def _model(self, name: str, ex: Exchange) -> None:
        if name not in self.gw.catalog.models:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(sorted(self.gw.catalog.models))}")
        ex.model = name

    # forward -----------------------------------------------------------------------
    async def _call(self, scope, headers, route: "VersionRoute", body, ex: Exchange) -> UpstreamResponse:
        upstream_headers = upstream_request_headers(
            headers,
            request_id=ex.request_id,
            client_addr=ex.client_addr.encode(),
            scheme=scope.get("scheme", "http").encode(),
            extra=route.extra_headers,
        )
        sent = perf_counter()
        try:
            response = await route.pool.request(ex.method.encode(), ex.target, upstream_headers, body)
        except UpstreamError as exc:
            self.gw.metrics.upstream_error(ex.model, ex.version, exc.kind)
            ex.upstream_error = exc.kind
            if exc.kind == "timeout":
                raise UpstreamTimeout(f"upstream of {ex.model}/{ex.version} did not answer in time") from None
            raise UpstreamUnreachable(f"upstream of {ex.model}/{ex.version}: {exc}") from None
        ex.upstream_seconds = perf_counter() - sent
        if response.status >= 500:
            self.gw.metrics.upstream_error(ex.model, ex.version, "5xx")
        return response

    # hold or release ---------------------------------------------------------------
    async def _hold_or_release(self, headers, ex: Exchange, plan: Plan, response: UpstreamResponse, send) -> None:
        """Levels 2 and 3: the whole answer is read before anything reaches the client."""
        upstream_seconds = ex.upstream_seconds
        try:
            body = await answers.read_all(response, self.buffer_limit)
        except answers.AnswerTooLarge:
            ex.route = HELD
            await self._hold(headers, ex, plan, send, kind="hold", recommendation=None,
                             reason=f"the answer is larger than limits.max_response_buffer_bytes ({self.buffer_limit}); not kept")
            return
        ex.upstream_seconds = upstream_seconds + 0.0
        out_headers = client_response_headers(response.headers, keep_length=False)
        ex.response_status, ex.response_headers, ex.response_body = response.status, out_headers, body
        recommendation = {"status": response.status, "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in out_headers],
                          **pack_body(body)}
        source = self.gw.model_policy(ex.model).confidence
        ex.confidence = read_confidence(source, response.headers, body)  # decides at level 2, informs the reviewer at 3
        if plan.hold_all:
            ex.route = HELD
            await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation,
                             reason=f"level {plan.level}: every answer is reviewed; the model's answer is a recommendation")
            return
        if meets(ex.confidence, plan.threshold):  # type: ignore[arg-type]
            ex.route = SAMPLED if plan.sampled else AUTO
            await answers.send_whole(send, ex, response.status, out_headers, body, on_complete=lambda: self._record(ex, plan, headers))
            if plan.sampled:
                self._queue_sample(ex)
            return
        ex.route = HELD
        reason = (f"confidence {ex.confidence:.4g} is below the threshold {plan.threshold:g}" if ex.confidence is not None
                  else f"confidence missing or unreadable ({source.source}); the threshold is {plan.threshold:g}")
        await self._hold(headers, ex, plan, send, kind="hold", recommendation=recommendation, reason=reason)

    async def _hold(self, headers, ex: Exchange, plan: Plan, send, *, kind: str, recommendation, reason: str) -> None:
        """Store a ticket durably, then answer 202 (or the decision, if it comes within `Prefer: wait`)."""
        review = self.gw.policy.review
        ticket = make_ticket(
            kind=kind, request_id=ex.request_id.decode(), caller=ex.caller.id, model=ex.model,  # type: ignore[union-attr]
            version=ex.version, level=ex.level, reason=reason, request=self._request_capture(headers, ex),
            recommendation=recommendation, confidence=ex.confidence, timeout=review.timeout,
            policy_version=self.gw.policy.version,
        )
        await self.gw.review.add(ticket)
        ex.ticket = ticket["id"]
        await self.gw.recorder.durable(await self._record(ex, plan, headers))
        prefer = parse_prefer(headers)
        applied = b"respond-async" if prefer.respond_async else None
        if prefer.wait is not None and not prefer.respond_async:
            wait = min(prefer.wait, review.max_hold_wait)
            applied = b"wait=%d" % wait
            closed = await self.gw.review.wait(ticket["id"], wait)
            if closed is not None:
                status, out_headers, body = final_answer(closed)
                await answers.send_whole(send, ex, status, out_headers + [(b"preference-applied", applied)], body)
                return
        await answers.send_pending(send, ex, ticket, preference=applied)

    def _request_capture(self, headers, ex: Exchange) -> dict[str, Any]:
        return {
            "method": ex.method,
            "path": ex.target.decode("latin-1"),
            "headers": capture_headers(headers, self.gw.policy.evidence.redact_headers),
            **pack_body(ex.request_body or b""),
        }

    def _queue_sample(self, ex: Exchange) -> None:
        """A served answer picked for post-hoc review: a ticket that blocks nobody."""
        ticket = make_ticket(
            kind="sample", request_id=ex.request_id.decode(), caller=ex.caller.id, model=ex.model,  # type: ignore[union-attr]
            version=ex.version, level=ex.level, reason=f"sampled at level {ex.level} for post-hoc review",
            request={"method": ex.method, "path": ex.target.decode("latin-1"), **pack_body(ex.request_body or b"")},
            recommendation={"status": ex.response_status,
                            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in ex.response_headers],
                            **pack_body(ex.response_body or b""), "truncated": ex.truncated},
            confidence=ex.confidence, timeout=None, policy_version=self.gw.policy.version,
        )
        self.gw.review.add_sample(ticket)

    # record and observe --------------------------------------------------------------
    async def _record(self, ex: Exchange, plan: Plan, headers: list[tuple[bytes, bytes]]) -> int | None:
        if not (plan.record or ex.route in (HELD, HUMAN, SAMPLED)):
            return None
        return await self.gw.record_exchange(ex, headers)

    def _observe(self, ex: Exchange) -> None:
        elapsed = perf_counter() - ex.started
        status = ex.status if not ex.disconnected else 499
        self.gw.metrics.observe(ex.model or "-", ex.version or "-", status, ex.route, elapsed, elapsed - ex.upstream_seconds)
        self.gw.observe_exchange(ex, elapsed)
        if ex.version:
            recent = self.recent.get((ex.model, ex.version))
            if recent is None:
                recent = self.recent[(ex.model, ex.version)] = deque(maxlen=20)
            recent.append(ex.request_id.decode())
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
                    "ticket": ex.ticket,
                    "error": ex.error_type,
                },
            )

    # streams -------------------------------------------------------------------------
    def _on_state_change(self, key: str, old: dict | None, new: dict) -> None:
        if key.startswith("level/") and new.get("level") == 4 and self.gw.policy.oversight.end_streams_on_pause:
            model = None if key == "level/global" else key[len("level/model/"):]
            ended = self.end_streams(model)
            if ended:
                log.warning("level 4: ended %d stream(s) in flight", ended, extra={"model": model or "*"})

    def end_streams(self, model: str | None) -> int:
        """End the streams in flight for `model` (or every model): used when a level 4 lands."""
        ended = 0
        for name, responses in self.streams.items():
            if model is None or name == model:
                for response in list(responses):
                    response.abort("the model was paused (level 4) while this answer streamed")
                    ended += 1
        return ended


async def _watch_disconnect(receive, task, ex: Exchange) -> None:
    """Cancel the request's task when its client goes away, which aborts the upstream call."""
    message = await receive()
    if message["type"] == "http.disconnect" and not ex.finished:
        ex.disconnected = True
        task.cancel()


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
