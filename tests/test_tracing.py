"""OpenTelemetry traces, end to end: a gateway process exporting OTLP/HTTP to a local receiver.

The receiver decodes the OpenTelemetry proto (`ExportTraceServiceRequest`) as a collector
would; the upstream records the `traceparent` it was sent; a reviewer's decision must come
back as a span linked to the request it decided.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.rawhttp import RawUpstream
from tests.support import GatewayProcess, auth, eventually, free_port, write_config

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "demo-served-7b",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}).encode()
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: POST /v1/traces, protobuf in, spans kept."""

    def __init__(self) -> None:
        self.spans: list = []  # (resource attributes, span)
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.paths.append(self.path)
                request = trace_service.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        outer.spans.extend((resource, span) for span in scope_spans.spans)
                answer = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, prefix: str) -> list:
        return [span for _, span in self.spans if span.name.startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = value.int_value if value.HasField("int_value") else value.string_value
    return out


def traceparent_seen(raw: bytes) -> str | None:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"traceparent":
            return value.strip().decode()
    return None


def ids(traceparent: str | None) -> tuple[str, str, bool]:
    """A W3C traceparent's trace id, parent (span) id and sampled flag."""
    assert traceparent is not None, "the upstream got no traceparent"
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


@pytest.fixture
async def traced(tmp_path):
    receiver = Receiver()
    upstream = await RawUpstream(lambda head: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                             b"content-length: %d\r\n\r\n" % len(ANSWER) + ANSWER).start()
    config = write_config(tmp_path, {"demo": {"1": upstream.url}})
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_SERVICE_NAME": "gateway-under-test", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_TRACES_SAMPLER": None, "OTEL_SDK_DISABLED": None, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": None}
    gateway = await asyncio.to_thread(GatewayProcess(config, free_port(), env=env).start)
    try:
        yield gateway, upstream, receiver
    finally:
        await asyncio.to_thread(gateway.stop)
        await upstream.stop()
        receiver.close()


async def test_request_and_decision_spans_reach_an_otlp_receiver(traced):
    gateway, upstream, receiver = traced
    chat = {"model": "demo", "messages": [{"role": "user", "content": "may I?"}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        # level 0, no incoming trace: a root span, tokens read from the whole answer it relayed
        r = await http.post("/v1/chat/completions", json=chat, headers=auth("client"))
        assert r.status_code == 200, r.text
        auto_id = r.headers["x-request-id"]
        # level 3 with the client's own traceparent: held, then decided by a reviewer
        r = await http.put("/admin/oversight/models/demo", json={"level": 3, "reason": "tracing test"},
                           headers=auth("operator"))
        assert r.status_code == 200, r.text
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        r = await http.post("/v1/chat/completions", json=chat,
                            headers={**auth("client"), "traceparent": parent, "prefer": "respond-async"})
        assert r.status_code == 202, r.text
        ticket = r.json()["ticket"] if "ticket" in r.json() else r.headers["x-ticket"]
        held_id = r.headers["x-request-id"]
        r = await http.post(f"/review/tickets/{ticket}/decision", json={"action": "approve", "note": "fine"},
                            headers=auth("reviewer"))
        assert r.status_code == 200, r.text

        async def exported():
            return len(receiver.named("chat demo")) >= 2 and receiver.named("oversight.decision")

        await eventually(exported, timeout=10)

    assert set(receiver.paths) == {"/v1/traces"}
    assert all(resource.get("service.name") == "gateway-under-test" for resource, _ in receiver.spans)
    spans = {attrs(s)["oversight.request_id"]: s for s in receiver.named("chat demo")}
    seen = [traceparent_seen(raw) for raw in upstream.received]
    assert len(seen) == 2

    auto = spans[auto_id]
    a = attrs(auto)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "demo"
    assert a["gen_ai.response.model"] == "demo-served-7b"
    assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == 3
    assert a["http.request.method"] == "POST" and a["http.response.status_code"] == 200
    assert a["oversight.level"] == 0 and a["oversight.route"] in ("auto", "sampled") and a["oversight.version"] == "1"
    assert auto.kind == auto.SPAN_KIND_SERVER and auto.parent_span_id == b""
    assert ids(seen[0]) == (auto.trace_id.hex(), auto.span_id.hex(), True)  # the upstream's parent is this span

    held = spans[held_id]
    h = attrs(held)
    assert h["oversight.level"] == 3 and h["oversight.route"] == "held" and h["oversight.ticket"] == ticket
    assert h["http.response.status_code"] == 202
    assert h["gen_ai.usage.input_tokens"] == 11 and h["gen_ai.usage.output_tokens"] == 3
    assert held.trace_id.hex() == CLIENT_TRACE and held.parent_span_id.hex() == CLIENT_SPAN  # the client's trace
    assert ids(seen[1]) == (CLIENT_TRACE, held.span_id.hex(), True)

    (decision,) = receiver.named("oversight.decision")
    d = attrs(decision)
    assert d["oversight.ticket"] == ticket and d["oversight.decision"] == "approve"
    assert d["oversight.reviewer"] and d["oversight.request_id"] == held_id
    (link,) = decision.links
    assert (link.trace_id, link.span_id) == (held.trace_id, held.span_id)


def test_off_unless_the_environment_asks_for_otlp():
    from gateway.tracing import enabled

    assert not enabled({})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})  # an endpoint alone: still off
    assert not enabled({"OTEL_TRACES_EXPORTER": "none"})
    assert enabled({"OTEL_TRACES_EXPORTER": "otlp"})
    assert enabled({"OTEL_TRACES_EXPORTER": "console, otlp"})
    assert not enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
