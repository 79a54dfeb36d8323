"""Answers whose end is the end of the connection: `python -m tests.thirdparty.close_server --port N`.

HTTP/1.1 lets a server end an answer that has neither Content-Length nor chunked framing
by closing the connection (RFC 9112 section 6.3, rule 8); HTTP/1.0 servers do it for every
answer. Old model servers, CGI-style wrappers and hand-written SSE endpoints still do.
This server writes each answer as raw bytes, with no length at all, then closes:

- `/http10`: `HTTP/1.0 200` with a JSON body (about 200 KB, so it spans many reads).
- `/close`: `HTTP/1.1 200` with `Connection: close` and the same kind of JSON body.
- `/sse` and `/v1/chat/completions`: `HTTP/1.1 200` `text/event-stream` with `Connection:
  close`, events written one at a time, the OpenAI one ending in `data: [DONE]`.

The confidence in every answer comes from the request's `x-confidence` (default 0.95).
Bodies depend only on the request, so straight and through the gateway they are equal.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

FILLER = "".join(hashlib.sha256(b"%d" % i).hexdigest() for i in range(3200))  # ~200 KB of text


def _head_fields(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return method, target, fields


def answer(target: bytes, fields: dict[bytes, bytes]) -> list[bytes]:
    """The pieces of the answer to write, in order; the connection is closed after the last."""
    confidence = float(fields.get(b"x-confidence", b"0.95"))
    path = target.split(b"?", 1)[0]
    if path == b"/http10":
        body = json.dumps({"decision": "approve", "confidence": confidence, "framing": "http/1.0", "filler": FILLER})
        return [b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n", body.encode()]
    if path == b"/close":
        body = json.dumps({"decision": "approve", "confidence": confidence, "framing": "close", "filler": FILLER})
        return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n", body.encode()]
    if path in (b"/sse", b"/v1/chat/completions"):
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"connection: close\r\n\r\n")
        events = [{"id": "chatcmpl-close", "object": "chat.completion.chunk", "created": 1700000000, "model": "raw",
                   "confidence": confidence, "choices": [{"index": 0, "delta": {"content": f"word{i} "},
                                                          "finish_reason": None}]} for i in range(8)]
        events.append({"id": "chatcmpl-close", "object": "chat.completion.chunk", "created": 1700000000, "model": "raw",
                       "confidence": confidence, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        pieces = [head] + [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        if path == b"/v1/chat/completions":
            pieces.append(b"data: [DONE]\n\n")
        return pieces
    body = b'{"error": "no such path"}'
    return [b"HTTP/1.0 404 Not Found\r\ncontent-type: application/json\r\n\r\n" + body]


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        _, target, fields = _head_fields(head[:-4])
        length = int(fields.get(b"content-length", b"0"))
        if length:
            await reader.readexactly(length)
        pieces = answer(target, fields)
        for i, piece in enumerate(pieces):
            writer.write(piece)
            await writer.drain()
            if i and len(pieces) > 3:
                await asyncio.sleep(0.005)  # a stream: each event leaves as its own segment
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()  # the end of the answer


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
