"""Slow clients and greedy upstreams are bounded: deadlines while reading, caps on what is relayed and held open."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.rawhttp import RawUpstream, body_of, raw_request, status_of
from tests.support import TOKENS, auth, serve_in_process, write_config

HUGE_HEADERS = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(8000)) + \
    b"content-length: 2\r\n\r\n{}"
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def _script(head: bytes):
    if b"/huge-headers" in head:
        return HUGE_HEADERS
    if b"/slow" in head:
        return [2.0, OK]  # holds its connection for 2 s
    return OK


@pytest.fixture
async def upstream():
    server = await RawUpstream(_script).start()
    yield server
    await server.stop()


@pytest.fixture
async def gw(tmp_path, upstream):
    config = write_config(tmp_path, {"m": {"v1": upstream.url}}, policy={"defaults": {"sample_rate": {0: 0.0}}},
                          extra={"timeouts": {"client_header": "1s", "client_body": "1s", "connect": "1s"},
                                 "limits": {"upstream_connections": 2}})
    async with serve_in_process(config) as running:
        yield running


def _port(gw) -> int:
    return int(gw.url.rsplit(":", 1)[1])


async def test_a_client_trickling_header_lines_gets_408(gw, upstream):
    trickle = [b"GET /models/m/x HTTP/1.1\r\n"] + [piece for i in range(10) for piece in (b"x-slow-%d: 1\r\n" % i, 0.3)]
    started = time.monotonic()
    answer = await asyncio.to_thread(raw_request, _port(gw), trickle)
    assert status_of(answer) == 408 and json.loads(body_of(answer))["error"]["type"] == "request_timeout"
    assert time.monotonic() - started < 3.5 and upstream.received == []


async def test_an_upload_at_a_byte_a_second_is_cut_off(gw, upstream):
    head = (b"POST /models/m/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKENS["client"].encode() +
            b"\r\ncontent-length: 100\r\n\r\n")
    started = time.monotonic()
    answer = await asyncio.to_thread(raw_request, _port(gw), [head] + [piece for _ in range(10) for piece in (b"x", 0.5)])
    assert time.monotonic() - started < 4
    assert status_of(answer) in (0, 408), answer[:200]  # 408 before an answer starts; at worst a closed connection


async def test_an_upstream_header_block_too_large_is_a_502_not_relayed(gw):
    r = await gw.client.get("/models/m/huge-headers", headers=auth("client"))
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_unreachable"
    assert "header block" in r.json()["error"]["message"] and len(r.headers) < 20


async def test_a_version_holds_at_most_its_connection_limit(gw, upstream):
    async def slow():
        return await gw.client.get("/models/m/slow", headers=auth("client"))
    results = await asyncio.gather(*(slow() for _ in range(4)))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 503}, statuses
    busy = [r for r in results if r.status_code == 503]
    assert all(r.json()["error"]["type"] == "upstream_busy" for r in busy)
    assert upstream.max_open == 2  # never more connections than the version may hold
