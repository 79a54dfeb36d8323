"""TLS is configuration: an HTTPS listener, and an upstream behind a private CA that wants a client certificate."""

from __future__ import annotations

import asyncio
import ssl

from tests.pki import pki  # noqa: F401  (a fixture)
from tests.proxy.echo import EchoUpstream
from tests.support import auth, serve_in_process, write_config


async def test_https_listener_and_mutual_tls_upstream(tmp_path, pki):
    upstream_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    upstream_tls.load_cert_chain(pki["server"], pki["server_key"])
    upstream_tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no answer
    echo = EchoUpstream()
    echo.server = await asyncio.start_server(echo._serve, "127.0.0.1", 0, ssl=upstream_tls)
    echo.port = echo.server.sockets[0].getsockname()[1]
    version = {
        "upstream": f"https://127.0.0.1:{echo.port}",
        "tls": {"ca_bundle": str(pki["ca"]), "client_cert": str(pki["client"]), "client_key": str(pki["client_key"])},
    }
    untrusted = {"upstream": f"https://127.0.0.1:{echo.port}"}  # the system CAs do not know the private CA
    config = write_config(
        tmp_path,
        {"secure": {"v1": version}, "untrusted": {"v1": untrusted}},
        extra={"listen": {"host": "127.0.0.1", "port": 0, "tls": {"cert": str(pki["server"]), "key": str(pki["server_key"])}}},
    )
    try:
        async with serve_in_process(config, client_verify=ssl.create_default_context(cafile=str(pki["ca"]))) as gw:
            assert gw.url.startswith("https://")
            r = await gw.client.post("/models/secure/echo", json={"x": 1}, headers=auth("client"))
            assert r.status_code == 200, r.text
            assert r.json()["path"] == "/echo"
            r = await gw.client.post("/models/untrusted/echo", json={}, headers=auth("client"))
            assert r.status_code == 502 and "TLS" in r.json()["error"]["message"]
    finally:
        await echo.stop()
