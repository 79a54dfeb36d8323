"""The demo model as a pure ASGI application: one dict lookup per request, stdlib json.

Inference endpoints (`POST /v1/chat/completions`, `POST /predict`, `POST /v1/moderations`) go through the
failure switches in this order: latency, hang, reset, fail_rate. The other
endpoints (`/health`, `/v1/models`, `/_demo/*`) always answer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import time
from typing import Any, Awaitable, Callable

from gateway.demo import model
from gateway.demo.switches import FailSchedule, HangGate, Stats, Switches, confidence_value

MAX_BODY = 8 * 1024 * 1024

_encode = json.JSONEncoder(separators=(",", ":")).encode
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "method_not_allowed", 413: "request_too_large"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


class BodyTooLarge(Exception):
    pass


def error_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    """OpenAI-style error object, used for every error the demo answers."""
    return {"error": {"message": message, "type": kind or _ERROR_TYPES.get(status, "api_error"), "code": status}}


async def send_json(send: Send, status: int, obj: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = _encode(obj).encode()
    head = [_JSON, (b"content-length", b"%d" % len(body))]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _gone(watcher: asyncio.Future, seconds: float) -> bool:
    """Wait `seconds` (at least one loop turn); True if the client disconnected meanwhile."""
    if not watcher.done():
        if seconds > 0:
            await asyncio.wait((watcher,), timeout=seconds)
        else:
            await asyncio.sleep(0)
    return watcher.done()


async def drop_connection(send: Send, watcher: asyncio.Future) -> None:
    """Close the client's TCP connection with a reset and no HTTP response at all.

    ASGI has no way to say this: an exception before `http.response.start` makes
    uvicorn answer 500. uvicorn's `send` is a bound method of its per-request cycle,
    which holds the connection's transport; setting SO_LINGER to 0 and aborting the
    transport makes the kernel send RST, so the client sees "connection reset by
    peer". We then wait until uvicorn has seen the connection go (the disconnect
    watcher finishes) so it does not try to write a 500 itself.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise RuntimeError("reset switch: the ASGI server does not expose the transport (run under uvicorn)")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.wait((watcher,), timeout=1.0)


class DemoApp:
    """The demo model. `switches` are the start-up values `POST /_demo/reset` returns to."""

    def __init__(self, switches: Switches | None = None) -> None:
        self.initial = (switches or Switches()).copy()
        self.switches = self.initial.copy()
        self.stats = Stats()
        self.started = int(time.time())
        self._schedule = FailSchedule(self.switches.fail_rate)
        self._gate = HangGate()
        self._ids = itertools.count(1)
        self._routes: dict[str, dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]]] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/predict": {"POST": self._predict},
            "/v1/moderations": {"POST": self._moderations},
            "/v1/models": {"GET": self._models},
            "/health": {"GET": self._health},
            "/_demo/state": {"GET": self._state},
            "/_demo/config": {"POST": self._config},
            "/_demo/reset": {"POST": self._reset},
            "/_demo/stats": {"GET": self._stats},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":  # only when run with lifespan on; nothing to set up
                while (await receive())["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        route = self._routes.get(path)
        if route is None:
            if not path.startswith("/_demo/"):
                self.stats.count(path)
            await send_json(send, 404, error_body(404, f"no such endpoint: {scope['method']} {path}"))
            return
        handler = route.get(scope["method"])
        if handler is None:
            if not path.startswith("/_demo/") and path != "/health":
                self.stats.count(path)
            allow = ", ".join(route).encode()
            await send_json(send, 405, error_body(405, f"{path} accepts {allow.decode()}"), [(b"allow", allow)])
            return
        await handler(scope, receive, send)

    # ------------------------------------------------------------ switches

    def _apply(self, new: Switches, restart_failures: bool) -> None:
        self.switches = new
        if restart_failures:
            self._schedule.set_rate(new.fail_rate)
        if new.hang:
            self._gate.close()
        else:
            self._gate.open()

    def _confidence(self, scope: Scope) -> float:
        for key, value in scope["headers"]:
            if key == b"x-demo-confidence":
                try:
                    forced = float(value)
                except ValueError:
                    raise model.BadRequest(f"X-Demo-Confidence must be a number, got {value.decode('latin-1')!r}")
                try:
                    return confidence_value("X-Demo-Confidence", forced)
                except ValueError as exc:
                    raise model.BadRequest(str(exc)) from None
        return self.switches.confidence

    # ------------------------------------------------------------ inference

    def _misbehaving(self) -> bool:
        sw = self.switches
        return sw.latency_ms > 0 or sw.hang or sw.reset or sw.fail_rate > 0

    async def _misbehave(self, send: Send, watcher: asyncio.Future) -> bool:
        """Apply the failure switches; False when the request has been dealt with.

        Dealt with means: the client went away while we waited (counted as
        cancelled), the connection was reset, or an injected failure was sent.
        """
        stats = self.stats
        latency = self.switches.latency_ms
        if latency > 0 and await _gone(watcher, latency / 1000.0):
            stats.cancelled += 1
            return False
        if self.switches.hang:
            gate = asyncio.ensure_future(self._gate.wait())
            await asyncio.wait((watcher, gate), return_when=asyncio.FIRST_COMPLETED)
            gate.cancel()
            if watcher.done():
                stats.cancelled += 1
                return False
        sw = self.switches  # re-read: the switches may have changed while we waited
        if sw.reset:
            stats.resets += 1
            await drop_connection(send, watcher)
            return False
        if self._schedule.next_fails():
            stats.injected_failures += 1
            status = sw.fail_status
            headers = [(b"retry-after", b"1")] if status in (429, 503) else None
            message = f"injected failure from the demo model (fail_rate={sw.fail_rate})"
            await send_json(send, status, error_body(status, message, "demo_injected_failure"), headers)
            return False
        return True

    async def _inference(self, path: str, answer, scope: Scope, receive: Receive, send: Send) -> None:
        """Count, read the body, apply the switches, then `answer(doc, confidence, ...)`."""
        stats = self.stats
        stats.count(path)
        stats.in_flight += 1
        watcher = None
        try:
            try:
                body = await read_body(receive)
            except ClientGone:
                stats.cancelled += 1
                return
            except BodyTooLarge:
                await send_json(send, 413, error_body(413, f"request body over {MAX_BODY} bytes"))
                return
            if self._misbehaving():
                # Finishes when the client disconnects (or once our response is complete).
                watcher = asyncio.ensure_future(_wait_disconnect(receive))
                if not await self._misbehave(send, watcher):
                    return
            try:
                doc = json.loads(body)
            except ValueError as exc:
                await send_json(send, 400, error_body(400, f"request body is not valid JSON: {exc}"))
                return
            try:
                confidence = self._confidence(scope)
                await answer(doc, confidence, receive, send, watcher)
            except model.BadRequest as exc:
                await send_json(send, 400, error_body(400, str(exc)))
        finally:
            stats.in_flight -= 1
            if watcher is not None:
                watcher.cancel()

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("/v1/chat/completions", self._chat_answer, scope, receive, send)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("/predict", self._predict_answer, scope, receive, send)

    async def _predict_answer(self, doc: Any, confidence: float, receive: Receive, send: Send, watcher) -> None:
        applicant = model.applicant_of(doc)
        sw = self.switches
        decision, group = model.decide(applicant, sw.approval_rate, sw.skew)
        answer = {"decision": decision, "confidence": confidence, "group": group, "model": sw.name}
        await send_json(send, 200, answer, [(b"x-model-confidence", repr(confidence).encode())])

    async def _chat_answer(self, doc: Any, confidence: float, receive: Receive, send: Send, watcher) -> None:
        last_user, prompt_tokens, max_tokens, stream, logprobs, include_usage = model.chat_request(doc)
        if self.switches.strict_name and doc.get("model") != self.switches.name:
            await send_json(send, 404, error_body(404, f"The model `{doc.get('model')}` does not exist.", "NotFoundError"))
            return
        tokens, finish = model.reply_tokens(last_user, max_tokens)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens), "total_tokens": prompt_tokens + len(tokens)}
        name = self.switches.name
        ident, created = f"chatcmpl-demo-{next(self._ids):06d}", int(time.time())
        lp = model.logprob_of(confidence) if logprobs else 0.0
        conf_header = (b"x-model-confidence", repr(confidence).encode())
        if not stream:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": {"content": [model.token_logprob(t, lp) for t in tokens]} if logprobs else None,
                "finish_reason": finish,
            }
            answer = {
                "id": ident, "object": "chat.completion", "created": created, "model": name,
                "choices": [choice], "usage": usage, "confidence": confidence,
            }
            await send_json(send, 200, answer, [conf_header])
            return
        # Streaming: one chunk per token, a closing chunk with the finish reason, the
        # usage chunk when asked (stream_options.include_usage), then [DONE].
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name}
        events: list[dict[str, Any]] = []
        for i, token in enumerate(tokens):
            delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            token_lp = {"content": [model.token_logprob(token, lp)]} if logprobs else None
            choice = {"index": 0, "delta": delta, "logprobs": token_lp, "finish_reason": None}
            events.append({**base, "choices": [choice], "confidence": confidence})
        closing = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
        events.append({**base, "choices": [closing], "confidence": confidence})
        if include_usage:
            events.append({**base, "choices": [], "usage": usage, "confidence": confidence})
        payloads = [b"data: " + _encode(event).encode() + b"\n\n" for event in events]
        payloads.append(_DONE)
        await self._stream(payloads, conf_header, receive, send, watcher)

    async def _stream(self, payloads: list[bytes], conf_header, receive: Receive, send: Send, watcher) -> None:
        """Each SSE event as its own body message, `stream_delay_ms` between events.

        A client that goes away mid-stream is noticed at the next pause (the
        disconnect watcher finishes) and counted in `cancelled`.
        """
        if watcher is None:
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, conf_header]})
            delay = self.switches.stream_delay_ms / 1000.0
            for i, payload in enumerate(payloads):
                if await _gone(watcher, delay if i else 0.0):
                    self.stats.cancelled += 1
                    return
                await send({"type": "http.response.body", "body": payload, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    async def _moderations(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("/v1/moderations", self._moderation_answer, scope, receive, send)

    async def _moderation_answer(self, doc: Any, confidence: float, receive: Receive, send: Send, watcher) -> None:
        """A classifier in the OpenAI moderations shape (what Llama Guard servers expose too)."""
        results = [model.moderate(text) for text in model.moderation_inputs(doc)]
        await send_json(send, 200, {"id": f"modr-demo-{next(self._ids):06d}", "model": doc.get("model") or "demo-moderation",
                                    "results": results})

    # ------------------------------------------------------------ the rest

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.count("/v1/models")
        model_card = {"id": self.switches.name, "object": "model", "created": self.started, "owned_by": "gateway-demo"}
        await send_json(send, 200, {"object": "list", "data": [model_card]})

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.health_checks += 1
        await send_json(send, 200, {"status": "ok"})

    async def _state(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.switches.as_dict())

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.stats.as_dict())

    async def _config(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            changes = json.loads(await read_body(receive))
            new = self.switches.updated(changes)
        except ClientGone:
            return
        except BodyTooLarge:
            await send_json(send, 413, error_body(413, f"request body over {MAX_BODY} bytes"))
            return
        except ValueError as exc:  # bad JSON or a bad switch value
            await send_json(send, 400, error_body(400, f"bad demo config: {exc}"))
            return
        self._apply(new, restart_failures="fail_rate" in changes)
        await send_json(send, 200, new.as_dict())

    async def _reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._apply(self.initial.copy(), restart_failures=True)
        self.stats.zero()
        await send_json(send, 200, self.switches.as_dict())
