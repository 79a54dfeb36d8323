"""Sizes before trust: a control-plane body is refused with 413 while it is read, not after.

Each body (JSON on the API, forms on the console, the unauthenticated sign-in form too)
has a cap, `limits.max_control_body_bytes` (1 MiB by default). A chunked body declares no
length, so the cap is counted on the stream: the gateway answers 413 as soon as the body
passes it, without waiting for the rest, and nothing changes.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from tests.support import auth, console_session, kept_state

CAP = 1 << 20
CHUNK = 64 * 1024


async def _status_of_unfinished_chunked_body(url: str, method: str, path: str, headers: dict[str, str], sent: int) -> int:
    """Send `sent` bytes as chunks and never the last chunk: the answer must come before the body ends."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = [f"{method} {path} HTTP/1.1", f"host: {parts.netloc}", "transfer-encoding: chunked",
                *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        chunk = b"%x\r\n" % CHUNK + b"a" * CHUNK + b"\r\n"
        for _ in range(sent // CHUNK):
            writer.write(chunk)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_an_unauthenticated_chunked_sign_in_form_is_cut_off_at_the_cap(make_gateway):
    async with make_gateway() as gw:
        before = await kept_state(gw.gateway)
        status = await _status_of_unfinished_chunked_body(
            gw.url, "POST", "/console/login", {"content-type": "application/x-www-form-urlencoded"}, CAP + 2 * CHUNK)
        assert status == 413
        assert await kept_state(gw.gateway) == before


async def test_a_chunked_json_body_is_cut_off_at_the_cap(make_gateway):
    async with make_gateway() as gw:
        before = await kept_state(gw.gateway)
        status = await _status_of_unfinished_chunked_body(
            gw.url, "PUT", "/admin/oversight/global", {"content-type": "application/json", **auth("operator")}, CAP + 2 * CHUNK)
        assert status == 413
        assert await kept_state(gw.gateway) == before


@pytest.mark.parametrize("method, path", [
    ("PUT", "/admin/oversight/global"),
    ("POST", "/admin/kill"),
    ("POST", "/admin/incidents"),
    ("POST", "/admin/evidence/holds"),
    ("POST", "/v1/feedback"),
])
async def test_a_declared_body_over_the_cap_is_a_413_in_the_json_shape(make_gateway, method, path):
    async with make_gateway() as gw:
        before = await kept_state(gw.gateway)
        who = "client" if path.startswith("/v1/") else "operator"
        body = b'{"reason": "' + b"x" * CAP + b'"}'
        r = await gw.client.request(method, path, content=body, headers={**auth(who), "content-type": "application/json"})
        assert r.status_code == 413
        error = r.json()["error"]
        if path.startswith("/v1/"):  # the OpenAI shape
            assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        else:
            assert error["type"] == "payload_too_large"
        assert error["request_id"] and str(CAP) in error["message"]
        assert await kept_state(gw.gateway) == before


async def test_a_body_at_the_cap_is_read(make_gateway):
    async with make_gateway() as gw:
        prefix, suffix = b'{"level": 1, "reason": "', b'"}'
        body = prefix + b"x" * (CAP - len(prefix) - len(suffix)) + suffix
        r = await gw.client.put("/admin/oversight/global", content=body, headers={**auth("operator"), "content-type": "application/json"})
        assert r.status_code == 400 and "reason: string should have at most 2000 characters" in r.json()["error"]["message"]


async def test_a_console_form_over_the_cap_is_a_413_and_forms_still_work(make_gateway):
    async with make_gateway() as gw:
        signed_in = await console_session(gw.client, "operator")
        session, csrf = {"cookie": signed_in["cookie"]}, signed_in["x-csrf-token"]  # the CSRF token as a form field
        before = await kept_state(gw.gateway)
        big = await gw.client.post("/console/kill", headers=session,
                                   data={"csrf_token": csrf, "scope": "global", "reason": "x" * CAP, "confirm": "yes"})
        assert big.status_code == 413 and big.json()["error"]["type"] == "payload_too_large"
        multipart = await gw.client.post("/console/kill", headers=session,
                                         files={"csrf_token": (None, csrf), "scope": (None, "global")})
        assert multipart.status_code == 415 and "x-www-form-urlencoded" in multipart.json()["error"]["message"]
        assert await kept_state(gw.gateway) == before
        ok = await gw.client.post("/console/levels", headers={**session, "accept": "application/json"},
                                  data={"csrf_token": csrf, "scope": "demo", "level": "2", "reason": "form field CSRF"})
        assert ok.status_code == 200 and ok.json()["result"]["level"] == 2, ok.text
