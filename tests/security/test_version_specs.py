"""Versions added at run time: their headers go on the wire as checked, their secrets only from allowed variables.

Whoever adds a version chooses its upstream, so a spec may name only the environment
variables its model's config allows (`models.{m}.versions_api.allowed_env`), and header
names and values are checked after interpolation exactly as in a config file. A refused
spec registers nothing and sends nothing anywhere.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from tests.support import auth


@asynccontextmanager
async def recording_upstream():
    """A real HTTP/1.1 server on loopback that answers 200 and keeps every request head it read."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield url, heads
    finally:
        server.close()
        await server.wait_closed()


def _allow(*names: str) -> dict:
    return {"demo": {"versions_api": {"allowed_env": list(names)}}}


async def _add(gw, version: str, spec) -> object:
    return await gw.client.post("/admin/models/demo/versions", headers=auth("operator"),
                                json={"version": version, "reason": "candidate", "spec": spec})


async def _activate(gw, version: str):
    return await gw.client.post("/admin/models/demo/activate", headers=auth("operator"),
                                json={"version": version, "reason": "try it"})


async def _registered(gw) -> set[str]:
    r = await gw.client.get("/admin/models/demo/versions", headers=auth("operator"))
    return set(r.json()["versions"])


async def test_a_header_value_cannot_add_a_header_on_the_wire(make_gateway, monkeypatch):
    monkeypatch.setenv("DEMO_V2_KEY", "sk-v2")
    async with recording_upstream() as (url, heads), make_gateway(model_settings=_allow("DEMO_V2_KEY")) as gw:
        injected = {"upstream": url, "headers": {"x-api-key": "x${DEMO_V2_KEY:-}\r\nX-Injected: 1"}}
        r = await _add(gw, "v2", injected)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == ("spec.headers: header x-api-key: the value holds a CR, LF or NUL "
                                                "character, which would end the header")
        assert (await _activate(gw, "v2")).status_code == 404
        assert await _registered(gw) == {"v1"} and heads == []


async def test_a_spec_may_name_only_the_environment_variables_its_model_allows(make_gateway, monkeypatch):
    monkeypatch.setenv("DEMO_V2_KEY", "sk-v2")
    monkeypatch.setenv("OTHER_MODEL_KEY", "sk-other-model")
    async with recording_upstream() as (url, heads), make_gateway(model_settings=_allow("DEMO_V2_KEY")) as gw:
        audit_before = await gw.gateway.store.audit_log()
        for value in ("${OTHER_MODEL_KEY}", "Bearer ${DEMO_V2_KEY} ${OTHER_MODEL_KEY:-}"):
            r = await _add(gw, "v2", {"upstream": url, "headers": {"authorization": value}})
            assert r.status_code == 400
            assert r.json()["error"]["message"] == (
                "spec.headers.authorization: environment variable OTHER_MODEL_KEY is not allowed for versions added "
                "at run time; allow it in the config under models.demo.versions_api.allowed_env")
        r = await _add(gw, "v3", {"upstream": url, "headers": {"authorization": "Bearer ${DEMO_V2_KEY"}})
        assert r.status_code == 400 and "starts no ${VAR}" in r.json()["error"]["message"]
        assert (await _activate(gw, "v2")).status_code == 404
        assert await _registered(gw) == {"v1"} and heads == []  # nothing stored, nothing sent
        assert await gw.gateway.store.audit_log() == audit_before
        allowed = await _add(gw, "v2", {"upstream": url, "headers": {"authorization": "Bearer ${DEMO_V2_KEY}"}})
        assert allowed.status_code == 201, allowed.text
        assert (await _activate(gw, "v2")).status_code == 200
        assert heads and b"authorization: Bearer sk-v2\r\n" in heads[-1] and b"sk-other-model" not in b"".join(heads)


async def test_without_an_allowed_list_no_variable_may_be_named(make_gateway, monkeypatch):
    monkeypatch.setenv("HOME_SECRET", "s")
    async with make_gateway() as gw:
        r = await _add(gw, "v2", {"upstream": "http://127.0.0.1:9", "headers": {"x-key": "${HOME_SECRET}"}})
        assert r.status_code == 400 and "HOME_SECRET is not allowed" in r.json()["error"]["message"]
        r = await _add(gw, "v2", {"upstream": "http://127.0.0.1:9/${HOME_SECRET}"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(
            "spec.upstream: environment variable HOME_SECRET is not allowed")


async def test_a_spec_of_the_wrong_shape_is_a_400_not_a_500(make_gateway, monkeypatch):
    monkeypatch.setenv("K", "k")
    async with make_gateway(model_settings=_allow("K")) as gw:
        for spec, problem in [
            ({"upstream": "http://127.0.0.1:9", "headers": ["x-api-key", "${K}"]}, "spec.headers: input should be a valid dictionary"),
            ({"upstream": "http://127.0.0.1:9", "headers": {"x-api-key": 7}}, "spec.headers.x-api-key: input should be a valid string"),
            ({"upstream": "http://127.0.0.1:9", "headers": {"x api": "${K:-}"}}, "spec.headers: header name 'x api'"),
        ]:
            r = await _add(gw, "v2", spec)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith(problem) and r.json()["error"]["request_id"]
        r = await gw.client.post("/admin/models/demo/versions", headers=auth("operator"),
                                 json={"version": "v2", "reason": "x", "spec": ["upstream", "http://127.0.0.1:9"]})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("spec: input should be a valid dictionary")
        assert await _registered(gw) == {"v1"}
