"""What reaches the upstream, and what the client gets from the server itself, byte for byte.

A raw-socket upstream records the exact request lines it receives; a raw socket client
sends exactly what an attacker would. Paths cannot climb out of a version's base URL;
oversized or malformed requests are refused in the JSON error shape before anything is
forwarded; an upstream cannot claim a review that never happened.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.rawhttp import RawUpstream, body_of, raw_request, status_of
from tests.support import TOKENS, auth, serve_in_process, write_config

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
FORGED = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-decision: approve\r\nx-decided-by: alice\r\n"
          b"x-ticket: tk_forged\r\ncontent-length: 2\r\n\r\n{}")


@pytest.fixture
async def upstream():
    server = await RawUpstream(lambda head: FORGED if b"/forge" in head else OK).start()
    yield server
    await server.stop()


@pytest.fixture
async def gw(tmp_path, upstream):
    config = write_config(tmp_path, {"m": {"v1": f"{upstream.url}/base/sub"}, "raw": {"v1": f"{upstream.url}/other"}},
                          policy={"defaults": {"sample_rate": {0: 0.0}}})
    async with serve_in_process(config) as running:
        yield running


def _get(gw, target: bytes, extra: bytes = b"") -> bytes:
    port = int(gw.url.rsplit(":", 1)[1])
    return raw_request(port, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKENS["client"].encode()
                       + b"\r\n" + extra + b"connection: close\r\n\r\n")


@pytest.mark.parametrize("target", [b"/models/m/../../b", b"/models/m/%2e%2e/%2e%2e/b", b"/models/m/..%2f..%2fb",
                                    b"/models/m/a%2Fb", b"/models/m/a\\b", b"/models/m/./x", b"/v1/../models/m/x"])
async def test_a_path_cannot_climb_out_of_the_versions_base(gw, upstream, target):
    answer = await _in_thread(_get, gw, target)
    assert status_of(answer) == 400, answer[:200]
    error = json.loads(body_of(answer))["error"]
    assert error["request_id"] and ("segments" in error["message"] or "encoded" in error["message"])
    assert upstream.received == []


async def test_the_forwarded_target_is_built_from_the_bytes_the_client_sent(gw, upstream):
    for target, line in ((b"/models/%72aw/b/ok", b"GET /other/b/ok HTTP/1.1"),
                         (b"/models/m/x%20y?q=1", b"GET /base/sub/x%20y?q=1 HTTP/1.1"),
                         (b"/models/m", b"GET /base/sub/ HTTP/1.1")):
        answer = await _in_thread(_get, gw, target)
        assert status_of(answer) == 200, answer[:200]
        assert upstream.request_lines()[-1] == line


async def test_an_upstream_cannot_forge_a_review(gw):
    r = await gw.client.get("/models/m/forge", headers=auth("client"))
    assert r.status_code == 200
    assert not {"x-decision", "x-decided-by", "x-ticket"} & {k.lower() for k in r.headers}


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
                                           b"GET /models/m/x HTTP/1.1\r\ncontent-length: abc\r\n\r\n"])
async def test_a_malformed_request_is_answered_in_json(gw, upstream, request_bytes):
    port = int(gw.url.rsplit(":", 1)[1])
    answer = await _in_thread(raw_request, port, request_bytes)
    assert status_of(answer) == 400 and b"content-type: application/json" in answer.lower()
    assert json.loads(body_of(answer))["error"]["request_id"]
    assert upstream.received == []


@pytest.mark.parametrize("bad", [b"GARBAGE\r\n\r\n", b"GET /models/m/x HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"])
async def test_a_bad_request_pipelined_behind_good_ones_is_refused_after_they_are_answered(gw, upstream, bad):
    port = int(gw.url.rsplit(":", 1)[1])
    good = b"GET /models/m/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKENS["client"].encode() + b"\r\n\r\n"
    answer = await _in_thread(raw_request, port, good + good + bad)
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert statuses == [200, 200, 400 if bad.startswith(b"GARBAGE") else 431], answer[:600]
    assert answer.endswith(b"}") and json.loads(answer[answer.rindex(b"\r\n\r\n") + 4:])["error"]["request_id"]
    assert len(upstream.received) == 2


async def test_an_oversized_header_block_is_refused_before_anything_is_forwarded(gw, upstream):
    huge = b"x-big: " + b"a" * (1 << 20) + b"\r\n"
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(20_000))
    for extra in (huge, many):
        answer = await _in_thread(_get, gw, b"/models/m/x", extra)
        assert status_of(answer) == 431, answer[:200]
        assert json.loads(body_of(answer))["error"]["type"] == "header_fields_too_large"
    long_target = b"/models/m/" + b"a" * (64 * 1024)
    assert status_of(await _in_thread(_get, gw, long_target)) == 414
    assert upstream.received == []


async def _in_thread(fn, *args):
    import asyncio

    return await asyncio.to_thread(fn, *args)
