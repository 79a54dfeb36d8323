"""Serving the demo model: our own listening socket, uvicorn tuned for throughput, one start line."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from typing import Callable

import uvicorn

from gateway.demo.asgi import DemoApp
from gateway.demo.switches import Switches

# The one line printed (and flushed) once the socket accepts connections, e.g.
#   demo-model demo-v1 listening on http://127.0.0.1:9000
# Tests and scripts start `python -m gateway demo-model --port 0` and read the URL
# (and so the port the kernel picked) from it.
START_LINE_RE = re.compile(r"^demo-model (?P<name>\S+) listening on (?P<url>http://\S+)$")


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is a plain error and port 0 works."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self._announce()


def serve(switches: Switches, sock: socket.socket, out=None) -> None:
    """Serve `DemoApp(switches)` on the bound `sock` until SIGINT/SIGTERM."""
    out = out or sys.stdout
    line = f"demo-model {switches.name} listening on {url_of(sock)}"
    has = importlib.util.find_spec
    config = uvicorn.Config(
        DemoApp(switches),
        loop="uvloop" if has("uvloop") else "asyncio",
        http="httptools" if has("httptools") else "h11",
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=1,  # a `hang` request must not hold shutdown forever
    )
    server = _Server(config, lambda: print(line, file=out, flush=True))
    server.run(sockets=[sock])
