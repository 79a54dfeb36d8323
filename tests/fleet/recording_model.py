"""The demo model, noting when each `/predict` request reached it and whose it was.

    python -m tests.fleet.recording_model [--port 0]

Prints the demo model's start line. `GET /_arrivals` answers `[[t, id], ...]`: `t` is
`time.monotonic()` when the request reached the model (CLOCK_MONOTONIC, the same clock
in every process of the machine, so the scenario compares it with its own times) and
`id` is the request body's `applicant.id`. What a gateway forwards is seen here, not
inferred from the gateway's own reports.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from gateway.demo.asgi import DemoApp, send_json


class Recording:
    def __init__(self, app: DemoApp) -> None:
        self.app = app
        self.arrivals: list[tuple[float, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/_arrivals":
            await send_json(send, 200, self.arrivals)
            return
        if scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            ident = str(json.loads(body)["applicant"]["id"])
        except (ValueError, KeyError, TypeError):
            ident = ""
        self.arrivals.append((arrived, ident))

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def main() -> None:
    import uvicorn

    from gateway.demo.server import listen_socket, url_of
    from gateway.demo.switches import Switches

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    switches = Switches()
    sock = listen_socket("127.0.0.1", args.port)
    config = uvicorn.Config(Recording(DemoApp(switches)), lifespan="off", access_log=False, log_level="warning",
                            server_header=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        print(f"demo-model {switches.name} listening on {url_of(sock)}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
