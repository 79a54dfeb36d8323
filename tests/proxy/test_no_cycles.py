"""The request path leaves no reference cycles behind: what it allocates is freed by reference counting.

The server runs with rare young collections (`gateway.serving.settle_heap`) because nothing
per request needs the garbage collector; a cycle made per request (the server's cycle named
in its own scope did) brings the collector back at every few dozen requests. Requests come
from a plain socket on a thread, so everything collected is the gateway's (or its server's).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket

import pytest

from tests.support import TOKENS, serve_in_process, write_config

CHAT = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hello"}]}).encode()


def _requests(port: int, count: int, stream: bool = False) -> list[int]:
    body = CHAT if not stream else CHAT[:-1] + b',"stream":true}'
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               b"authorization: Bearer " + TOKENS["client"].encode() + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    statuses = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        for _ in range(count):
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            statuses.append(int(head[9:12]))
            if b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(rest) < length:
                    rest += s.recv(65536)
            else:  # chunked: read to the last chunk
                while not rest.endswith(b"0\r\n\r\n"):
                    rest += s.recv(65536)
    return statuses


def _ours(garbage: list) -> list:
    def of_ours(obj) -> bool:
        module = type(obj).__module__ or ""
        if module.startswith(("gateway", "uvicorn")):
            return True
        code = getattr(obj, "f_code", None) or getattr(obj, "__code__", None)
        return code is not None and "/gateway/" in code.co_filename
    return [o for o in garbage if of_ours(o)]


@pytest.mark.parametrize("level", [0, 1])
async def test_requests_at_a_level_leave_no_cycles(tmp_path, demo, level):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, policy={"oversight": {"initial_level": level}},
                          extra={"logging": {"level": "warning", "access_log": False}})
    async with serve_in_process(config) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        assert await asyncio.to_thread(_requests, port, 20) == [200] * 20  # warm: caches, pools, first connections
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            statuses = await asyncio.to_thread(_requests, port, 200)
            statuses += await asyncio.to_thread(_requests, port, 20, True)
            gc.collect()
            left = _ours(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert statuses == [200] * 220
    assert left == [], f"{len(left)} objects in reference cycles, e.g. {[type(o).__qualname__ for o in left[:10]]}"
