"""A small aiohttp.web model server, run in its own process: `python -m tests.thirdparty.aiohttp_server --port N`.

Everything it answers is a pure function of the request, so the same request sent straight
to it and through the gateway gets the same bytes back. It compresses (gzip or deflate, as
aiohttp picks from the request's Accept-Encoding) only when the client accepts it; what
aiohttp writes on the wire (chunked streams, compressed lengths, the fields of a 204 or a
304) is aiohttp's own.

- `POST /predict`: JSON `{"decision", "confidence", "applicant"}`, the confidence from the
  request's `x-confidence` header (default 0.95).
- `POST /v1/chat/completions`: with `"stream": true` an SSE stream (StreamResponse, chunked),
  one event per word, each with the confidence, ending in `data: [DONE]`; else one JSON
  completion.
- `GET /large?size=N`: a JSON document of N bytes (default 5 MB) with the confidence, its
  filler hex text that compresses like real data, not like a run of one byte.
- `POST /empty`: 204. `GET /cached`: 304 when `If-None-Match` names its ETag, else 200.
"""

from __future__ import annotations

import argparse
import hashlib
import json

from aiohttp import web

ETAG = '"model-card-v1"'
LARGE_DEFAULT = 5 * 1024 * 1024
_FILLER_BLOCK = b"".join(hashlib.sha256(b"%d" % i).hexdigest().encode() for i in range(4096))  # 256 KiB of hex


def _confidence(request: web.Request) -> float:
    try:
        return float(request.headers.get("x-confidence", "0.95"))
    except ValueError:
        raise web.HTTPBadRequest(text="x-confidence must be a number") from None


def _maybe_compress(request: web.Request, response: web.StreamResponse) -> None:
    if "gzip" in request.headers.get("accept-encoding", "") or "deflate" in request.headers.get("accept-encoding", ""):
        response.enable_compression()


async def predict(request: web.Request) -> web.StreamResponse:
    doc = await request.json()
    confidence = _confidence(request)
    answer = {"decision": "approve" if confidence >= 0.5 else "deny", "confidence": confidence,
              "applicant": doc.get("applicant")}
    response = web.json_response(answer)
    _maybe_compress(request, response)
    return response


async def chat(request: web.Request) -> web.StreamResponse:
    doc = await request.json()
    confidence = _confidence(request)
    text = " ".join(str(m.get("content", "")) for m in doc.get("messages", []) if isinstance(m, dict))
    ident = "chatcmpl-aio-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    words = f"aiohttp answers: {text}".split()
    base = {"id": ident, "object": "chat.completion.chunk", "created": 1700000000, "model": "aio"}
    if not doc.get("stream"):
        answer = {**base, "object": "chat.completion", "confidence": confidence,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                               "finish_reason": "stop"}]}
        response = web.json_response(answer)
        _maybe_compress(request, response)
        return response
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    response.enable_chunked_encoding()
    _maybe_compress(request, response)
    await response.prepare(request)
    for i, word in enumerate(words):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
        event = {**base, "confidence": confidence, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    closing = {**base, "confidence": confidence, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await response.write(b"data: " + json.dumps(closing).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def large(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", LARGE_DEFAULT))
    head = b'{"confidence": %s, "filler": "' % repr(_confidence(request)).encode()
    tail = b'"}'
    need = max(0, size - len(head) - len(tail))
    filler = (_FILLER_BLOCK * (need // len(_FILLER_BLOCK) + 1))[:need]
    response = web.Response(body=head + filler + tail, content_type="application/json")
    _maybe_compress(request, response)
    return response


async def empty(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(status=204)


async def cached(request: web.Request) -> web.StreamResponse:
    if request.headers.get("if-none-match") == ETAG:
        return web.Response(status=304, headers={"etag": ETAG, "cache-control": "max-age=60"})
    response = web.json_response({"card": "model-card", "version": 1, "confidence": 0.95},
                                 headers={"etag": ETAG, "cache-control": "max-age=60"})
    _maybe_compress(request, response)
    return response


def app() -> web.Application:
    application = web.Application(client_max_size=16 * 1024 * 1024)
    application.add_routes([
        web.post("/predict", predict),
        web.post("/v1/chat/completions", chat),
        web.get("/large", large),
        web.post("/empty", empty),
        web.get("/cached", cached),
    ])
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
