#!/usr/bin/env python3
"""A raw upstream for the proxy benchmarks: uvloop + httptools, one fixed 460-byte chat completion.

As fast as Python serves HTTP/1.1 keep-alive, so what a benchmark measures in front of it is the
proxy. `--delay-ms N` answers after N ms (a model that thinks), and so does a
request with the header `x-bench-delay-ms: N`. A request whose body asks for a stream
(`"stream":true`) gets an OpenAI-style SSE stream of `--events` small events, one every
`--event-gap-ms`, then its usage and `data: [DONE]`.

    python scripts/rawupstream.py --port 9001 [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httptools
import uvloop

_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000", "object": "chat.completion", "created": 1764633600,
    "model": "demo", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The applicant meets the income "
                 "threshold for the requested amount; approve with the standard rate.", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 23, "completion_tokens": 19, "total_tokens": 42},
    "confidence": 0.93,
}


def completion_body(size: int = 460) -> bytes:
    """The completion padded with spaces to exactly `size` bytes (valid JSON either way)."""
    body = json.dumps(_COMPLETION, separators=(",", ":")).encode()
    return body[:-1] + b" " * max(0, size - len(body)) + b"}"


BODY = completion_body()
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


EVENT = _chunk(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764633600,"model":"demo",'
               b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n')
LAST = (_chunk(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764633600,"model":"demo",'
               b'"choices":[],"usage":{"prompt_tokens":23,"completion_tokens":1000,"total_tokens":1023}}\n\n')
        + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


class Upstream(asyncio.Protocol):
    delay = 0.0
    events = 1000  # a request whose body asks for a stream gets this many events...
    event_gap = 0.001  # ...one every this many seconds

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.wait = self.delay
        self.stream = False

    def on_body(self, body: bytes) -> None:
        if b'"stream":true' in body:
            self.stream = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 16 and name.lower() == b"x-bench-delay-ms":  # a slow model for this request
            self.wait = float(value) / 1000

    def on_message_complete(self) -> None:
        if self.stream:
            self.transport.write(STREAM_HEAD)
            self.loop.call_later(self.event_gap, self._event, self.events)
            return
        if self.wait:
            self.loop.call_later(self.wait, self._answer)
        else:
            self.transport.write(ANSWER)

    def _event(self, left: int) -> None:
        if self.transport.is_closing():
            return
        if left:
            self.transport.write(EVENT)
            self.loop.call_later(self.event_gap, self._event, left - 1)
        else:
            self.transport.write(LAST)

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(ANSWER)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--event-gap-ms", type=float, default=1.0)
    args = parser.parse_args()
    Upstream.delay = args.delay_ms / 1000
    Upstream.events, Upstream.event_gap = args.events, args.event_gap_ms / 1000
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
