#!/usr/bin/env python3
"""A naive reverse proxy for the proxy benchmark's comparison: Starlette on uvicorn, an aiohttp client.

What a team writes in an afternoon: read the body, forward it with the caller's headers,
answer with the upstream's status, body and content type. No oversight, no auth, no records.

    python scripts/naiveproxy.py --port 9002 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


_HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"}


def app_for(upstream: str) -> Starlette:
    session: dict[str, aiohttp.ClientSession] = {}

    async def proxy(request: Request) -> Response:
        if "s" not in session:
            session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k not in _HOP_BY_HOP}
        async with session["s"].post(upstream + request.url.path, data=body, headers=headers) as answer:
            return Response(await answer.read(), status_code=answer.status,
                            media_type=answer.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(app_for(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
