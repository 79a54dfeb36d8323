"""OpenTelemetry traces: a span per proxied request, a span per human decision linked to it.

Off unless the environment asks for it the OpenTelemetry SDK's way: `OTEL_TRACES_EXPORTER=otlp`
(and `OTEL_SDK_DISABLED` not `true`). Then everything else is the SDK's own environment
configuration, read by the SDK itself: `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (OTLP/HTTP protobuf; default `http://localhost:4318`),
`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`, `OTEL_SERVICE_NAME`
(default `oversight-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
`OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`), `OTEL_BSP_*` (the batch
processor: queue size, delay, batch size, export timeout).

Off, nothing here is imported by the request path and no span, not even a no-op one, is
made: the data plane holds `None` and checks it. On, spans end into a `BatchSpanProcessor`,
whose own thread exports them; the request path only appends to its queue (a full queue
drops spans, it never waits).

Request span (kind SERVER), named as the GenAI conventions name an inference span,
`{gen_ai.operation.name} {gen_ai.request.model}` (`chat demo`), or `{method} /models/{model}`
on a generic model route. Attributes: `gen_ai.operation.name`, `gen_ai.request.model`,
`gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens` (from
the answer's `usage`, when the gateway read the answer: any whole answer, or one it captured
for a ticket or a record), `http.request.method`, `http.response.status_code`,
`error.type`, and the gateway's own under `oversight.*`: `level`, `route`, `ticket`,
`version`, `request_id`. The W3C `traceparent` sent upstream names this span; a client's
`traceparent` (and `tracestate`) makes it the parent.

Decision span (kind INTERNAL, `oversight.decision`), when a reviewer decides a ticket on
any replica: a span link to the request span, whose context the ticket keeps (`trace`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange
    from gateway.review.tickets import Decision, Ticket

log = logging.getLogger("gateway.tracing")

SERVICE_NAME = "oversight-gateway"
_OPERATIONS = {b"/chat/completions": "chat", b"/completions": "text_completion", b"/embeddings": "embeddings",
               b"/responses": "chat"}


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: `OTEL_TRACES_EXPORTER` names `otlp`, and the SDK is not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return "otlp" in exporters


def from_environment(**resource: Any) -> "Tracing | None":
    """The tracing the environment asks for, or None (off: the default)."""
    if not enabled():
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
    if protocol and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: this gateway exports OTLP over HTTP (http/protobuf) only", protocol)
    try:
        return Tracing(**resource)
    except ImportError as exc:  # the `tracing` extra is not installed
        log.error("OTEL_TRACES_EXPORTER=otlp but OpenTelemetry is not installed (pip install "
                  "'oversight-gateway[tracing]'): %s; tracing stays off", exc)
        return None


class Tracing:
    """The gateway's tracer provider (its own, not the process-global one) and what it makes of exchanges."""

    def __init__(self, exporter: Any = None, **resource: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression: from the OTEL_ variables
        attributes = {"service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME, **resource}
        self.provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*: export off the request path
        self.tracer = self.provider.get_tracer("gateway")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._server = trace.SpanKind.SERVER
        self._internal = trace.SpanKind.INTERNAL
        self._error = trace.StatusCode.ERROR

    # the request span ------------------------------------------------------------------------
    def begin(self, ex: "Exchange", headers: list[tuple[bytes, bytes]], method: str) -> None:
        """Start the exchange's span (the client's `traceparent` its parent) and the headers that name it upstream."""
        carrier = None
        for name, value in headers:
            if name == b"traceparent" or name == b"tracestate":
                if carrier is None:
                    carrier = {}
                carrier[name.decode()] = value.decode("latin-1")
        parent = self._propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(method, context=parent, kind=self._server)
        ex.span = span
        out: dict[str, str] = {}
        self._propagator.inject(out, context=self._trace.set_span_in_context(span))
        ex.trace_headers = [(k.encode(), v.encode()) for k, v in out.items()]

    def observe(self, ex: "Exchange") -> None:
        """The exchange finished: name its span, give it what the request learned, end it."""
        span = ex.span
        if span is None:
            return
        if not span.is_recording():
            span.end()
            return
        from gateway.proxy.observers import final_status

        status = final_status(ex)
        attributes: dict[str, Any] = {"http.request.method": ex.method or "POST", "http.response.status_code": status,
                                      "oversight.request_id": ex.request_id.decode()}
        operation = None
        if ex.v1 is not None:
            path = ex.target.split(b"?", 1)[0]
            for suffix, name in _OPERATIONS.items():
                if path.endswith(suffix):
                    operation = name
                    break
        if ex.model:
            attributes["gen_ai.request.model"] = ex.model
        if operation:
            attributes["gen_ai.operation.name"] = operation
            span.update_name(f"{operation} {ex.model}")
        elif ex.model:
            span.update_name(f"{ex.method} /models/{ex.model}")
        if ex.level >= 0:
            attributes["oversight.level"] = ex.level
            attributes["oversight.route"] = ex.route
        if ex.version:
            attributes["oversight.version"] = ex.version
        if ex.ticket:
            attributes["oversight.ticket"] = ex.ticket
        if ex.response_status < 400:
            _answer(ex, attributes)
        if ex.error_type or ex.upstream_error or status >= 500:
            attributes["error.type"] = ex.error_type or (f"upstream_{ex.upstream_error}" if ex.upstream_error
                                                         else str(status))
            span.set_status(self._error)
        span.set_attributes(attributes)
        span.end()

    # the decision span ----------------------------------------------------------------------
    def decided(self, ticket: "Ticket", decision: "Decision") -> None:
        """A reviewer decided `ticket`: a span linked to the span of the request it decided."""
        from opentelemetry.trace import Link

        links = []
        context = self._request_context(ticket.trace)
        if context is not None:
            links.append(Link(context, {"oversight.ticket": ticket.id}))
        attributes: dict[str, Any] = {
            "oversight.ticket": ticket.id, "oversight.ticket.kind": ticket.kind, "oversight.decision": decision.outcome,
            "oversight.reviewer": decision.by, "oversight.request_id": ticket.request_id,
            "oversight.level": ticket.level, "oversight.version": ticket.version, "gen_ai.request.model": ticket.model,
        }
        if decision.reason:
            attributes["oversight.decision.reason"] = decision.reason
        span = self.tracer.start_span("oversight.decision", kind=self._internal, links=links, attributes=attributes,
                                      start_time=int(decision.at * 1e9))
        span.end()

    def _request_context(self, traceparent: str | None):
        if not traceparent:
            return None
        context = self._propagator.extract({"traceparent": traceparent})
        span_context = self._trace.get_current_span(context).get_span_context()
        return span_context if span_context.is_valid else None

    def shutdown(self) -> None:
        """Export what is queued (bounded by OTEL_BSP_EXPORT_TIMEOUT) and stop the exporter's thread."""
        self.provider.shutdown()


def traceparent_of(ex: "Exchange") -> str | None:
    """The `traceparent` naming the exchange's span (kept on its ticket), or None when it is not traced."""
    for name, value in ex.trace_headers or ():
        if name == b"traceparent":
            return value.decode()
    return None


_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')


def _answer(ex: "Exchange", attributes: dict[str, Any]) -> None:
    """`gen_ai.response.model` and the token counts, from what the gateway read of an OpenAI-shaped answer."""
    usage = getattr(ex, "usage", None)  # read from every OpenAI answer it relays (gateway.proxy.usage)
    body = ex.response_body if ex.response_body is not None else ex.peek
    if body:
        found = _MODEL.search(body)
        if found:
            attributes["gen_ai.response.model"] = found.group(1).decode("utf-8", "replace")
        if usage is None:
            usage = _usage(body)
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"] = usage


def _usage(body: bytes) -> tuple[int, int] | None:
    """(input, output) tokens from a JSON answer's `usage`, or from the event of a stream that carries it."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    doc = None
    try:
        doc = json.loads(body)
    except ValueError:  # a stream: the event that carries usage (stream_options.include_usage)
        start, end = body.rfind(b"data:", 0, at), body.find(b"\n", at)
        try:
            doc = json.loads(body[start + 5:end if end >= 0 else None]) if start >= 0 else None
        except ValueError:
            return None
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    made = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (given, made)):
        return None
    return given, made
