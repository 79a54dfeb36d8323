"""Console sessions and the event stream over plain HTTP: TLS cookies, expiry, replicas, keep-alive."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from gateway.app import GatewayApp
from gateway.console import session as console_session
from gateway.wiring import Gateway
from tests.console.conftest import APPLICANT, console_state
from tests.support import TOKENS, auth, eventually, gateway_factory, write_config


async def _sign_in(client: httpx.AsyncClient, who: str, **form) -> httpx.Response:
    return await client.post("/console/login", data={"token": TOKENS[who], **form}, follow_redirects=False)


def _sid(response: httpx.Response) -> str:
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("gw_console=")
    return cookie.split(";", 1)[0].split("=", 1)[1]


async def test_over_tls_the_cookie_is_secure_and_pages_carry_security_headers(tmp_path, demo):
    gw = Gateway.from_files(write_config(tmp_path, {"demo": {"v1": demo.url}}))
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=GatewayApp(gw))
        async with httpx.AsyncClient(transport=transport, base_url="https://console.test") as client:
            r = await _sign_in(client, "operator")
            assert r.status_code == 303 and r.headers["location"] == "/console"
            flags = [part.strip().lower() for part in r.headers["set-cookie"].split(";")]
            assert {"secure", "httponly", "samesite=strict", "path=/console"} <= set(flags)
            page = await client.get("/console", headers={"accept": "text/html", "cookie": f"gw_console={_sid(r)}"})
            assert page.status_code == 200
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    finally:
        await gw.stop()


async def test_a_session_ends_when_it_expires_on_the_server(tmp_path, demo, monkeypatch):
    monkeypatch.setattr(console_session, "LIFETIME", 1.0)
    monkeypatch.setattr(console_session, "CACHE_TTL", 0.0)
    async with gateway_factory(tmp_path, {"demo": {"v1": demo.url}})() as gw:
        sid = _sid(await _sign_in(gw.client, "reviewer"))
        cookie = {"cookie": f"gw_console={sid}", "accept": "text/html"}  # sent by hand: the server must refuse it
        assert (await gw.client.get("/console/review", headers=cookie)).status_code == 200
        await asyncio.sleep(1.2)
        r = await gw.client.get("/console/review", headers=cookie)
        assert r.status_code == 303 and r.headers["location"] == "/console/login?next=/console/review"
        assert await gw.gateway.store.query("sessions") == []  # and it is gone from the store


async def test_only_reviewers_and_operators_get_a_session(tmp_path, demo):
    async with gateway_factory(tmp_path, {"demo": {"v1": demo.url}})() as gw:
        for who in ("client", "auditor"):
            r = await _sign_in(gw.client, who)
            assert r.status_code == 403 and "set-cookie" not in r.headers
            assert "the console is for reviewers and operators" in r.text and TOKENS[who] not in r.text
        r = await gw.client.post("/console/login", data={"token": "gw_wrong"})
        assert r.status_code == 401 and "gw_wrong" not in r.text
        r = await gw.client.post("/console/login", data={})
        assert r.status_code == 401
        assert await gw.gateway.store.query("sessions") == []
        r = await gw.client.post("/console/login", data={"token": TOKENS["operator"]},
                                 headers={"origin": "https://elsewhere.example"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"


@pytest.mark.parametrize("target, lands", [
    ("/console/review/tk_1", "/console/review/tk_1"),
    ("//evil.example/console", "/console/review"),
    ("https://evil.example/console", "/console/review"),
    ("/console/login", "/console/review"),
    ("/admin/kill", "/console/review"),
])
async def test_after_sign_in_next_never_leaves_the_console(tmp_path, demo, target, lands):
    async with gateway_factory(tmp_path, {"demo": {"v1": demo.url}})() as gw:
        r = await _sign_in(gw.client, "reviewer", next=target)
        assert r.status_code == 303 and r.headers["location"] == lands


async def test_every_replica_accepts_a_session_and_streams_every_replicas_events(tmp_path, demo, redis_url):
    make = gateway_factory(tmp_path, {"demo": {"v1": demo.url}})
    async with make(store=redis_url) as a, make(store=redis_url) as b:
        sid = _sid(await _sign_in(a.client, "reviewer"))
        cookie = {"cookie": f"gw_console={sid}"}
        assert (await b.client.get("/console/review", headers={**cookie, "accept": "text/html"})).status_code == 200
        await a.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "r"}, headers=auth("operator"))
        events: list[dict] = []

        async def read():
            async with a.client.stream("GET", "/console/review/events", headers=cookie) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))

        reader = asyncio.create_task(read())
        await eventually(lambda: _streams(a, 1))
        held = await b.client.post("/models/demo/predict", json=APPLICANT,
                                   headers={**auth("client"), "prefer": "respond-async"})
        ticket = held.json()["ticket"]

        async def seen():
            return {"event": "created", "ticket": ticket, "model": "demo"} in events
        await eventually(seen)
        r = await b.client.post(f"/console/review/{ticket}/decide", headers={**cookie, "x-csrf-token": await _csrf(b, cookie)},
                                data={"decision": "reject", "note": "from replica b"})
        assert r.status_code == 200, r.text

        async def decided():
            return {"event": "decided", "ticket": ticket} in events
        await eventually(decided)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _streams(gw, n: int) -> bool:
    return console_state(gw).hub.streams == n


async def _csrf(gw, cookie: dict) -> str:
    html = (await gw.client.get("/console/review", headers={**cookie, "accept": "text/html"})).text
    return html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


async def test_the_event_stream_keeps_alive_and_ends_at_sign_out(tmp_path, demo, monkeypatch):
    from gateway.console import review

    monkeypatch.setattr(review, "KEEPALIVE_SECONDS", 0.2)
    async with gateway_factory(tmp_path, {"demo": {"v1": demo.url}})() as gw:
        sid = _sid(await _sign_in(gw.client, "reviewer"))
        cookie = {"cookie": f"gw_console={sid}"}
        csrf = await _csrf(gw, cookie)
        lines: list[str] = []

        async def read():
            async with gw.client.stream("GET", "/console/review/events", headers=cookie) as stream:
                async for line in stream.aiter_lines():
                    lines.append(line)

        reader = asyncio.create_task(read())

        async def kept_alive():
            return lines.count(": keep-alive") >= 2
        await eventually(kept_alive)
        r = await gw.client.post("/console/logout", headers={**cookie, "x-csrf-token": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        await asyncio.wait_for(reader, 5)  # the stream ended by itself
        assert "event: signed-out" in lines
        assert console_state(gw).hub.streams == 0
        r = await gw.client.get("/console/review/events", headers=cookie)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
