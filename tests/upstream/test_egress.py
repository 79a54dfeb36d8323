"""Egress through a forward proxy: the environment's HTTP(S)_PROXY and NO_PROXY, a real proxy (proxy.py).

Plain-HTTP upstreams go to the proxy in absolute form; HTTPS upstreams through a CONNECT
tunnel, TLS inside. The proxy is `proxy.py` (PyPI), in its own process; its log shows
what passed through it.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from gateway.upstream.egress import ForwardProxy, proxy_for
from tests.pki import pki  # noqa: F401  (a fixture)
from tests.proxy.echo import EchoUpstream
from tests.support import GatewayProcess, auth, dies_with_tests, free_port, serve_in_process, start_demo, wait_port, \
    write_config


@pytest.mark.parametrize("url, environ, expected", [
    ("https://api.example.com", {"HTTPS_PROXY": "http://proxy:3128"}, ForwardProxy("proxy", 3128)),
    ("http://api.example.com", {"HTTPS_PROXY": "http://proxy:3128"}, None),  # only https upstreams
    ("http://api.example.com", {"HTTP_PROXY": "proxy:8080"}, ForwardProxy("proxy", 8080)),  # scheme optional
    ("http://api.example.com", {"ALL_PROXY": "http://all:1"}, ForwardProxy("all", 1)),
    ("https://api.example.com", {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, ForwardProxy("lower", 1)),
    ("https://vllm.svc.cluster.local:8000", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".svc.cluster.local"}, None),
    ("https://10.0.0.5:8000", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.5:8000"}, None),
    ("https://10.0.0.5:9000", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.5:8000"}, ForwardProxy("p", 1)),
    ("https://anything", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
    ("https://api.example.com", {}, None),
])
def test_which_proxy_an_upstream_goes_through(url, environ, expected):
    assert proxy_for(url, environ) == expected


def test_proxy_credentials_become_basic_auth_and_never_show():
    proxy = proxy_for("https://api.example.com", {"HTTPS_PROXY": "http://gw%40corp:s3cret@proxy:3128"})
    assert proxy.authorization == b"Basic Z3dAY29ycDpzM2NyZXQ="  # gw@corp:s3cret
    assert "s3cret" not in repr(proxy) and "s3cret" not in str(proxy)


def test_only_http_proxies_are_supported():
    with pytest.raises(ValueError, match="only http:// proxies"):
        proxy_for("https://api.example.com", {"HTTPS_PROXY": "socks5://proxy:1080"})


@pytest.fixture
def forward_proxy(tmp_path):
    """proxy.py on a free loopback port; `log()` is what it printed."""
    port = free_port()
    log_path = tmp_path / "proxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port),
                                 "--num-workers", "1", "--num-acceptors", "1", "--log-level", "INFO"],
                                stdout=log, stderr=log, preexec_fn=dies_with_tests())
    wait_port(port, proc, timeout=30)

    class Running:
        url = f"http://127.0.0.1:{port}"

        @staticmethod
        def log() -> str:
            return log_path.read_text(errors="replace")

    yield Running
    proc.terminate()
    proc.wait(10)


def _logged(forward_proxy, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in forward_proxy.log():
            return forward_proxy.log()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the proxy's log:\n{forward_proxy.log()[-2000:]}")


def test_a_plain_http_upstream_is_reached_through_http_proxy(tmp_path, forward_proxy):
    demo = start_demo()
    demo_port = demo.url.rsplit(":", 1)[1]
    config = write_config(tmp_path, {"demo": {"v1": demo.url}})
    gateway = GatewayProcess(config, free_port(), env={"HTTP_PROXY": forward_proxy.url, "NO_PROXY": None,
                                                       "no_proxy": None, "http_proxy": None}).start()
    try:
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as client:
            r = client.post("/models/demo/predict", json={"applicant": {"id": "p-1"}}, headers=auth("client"))
            assert r.status_code == 200, r.text
    finally:
        gateway.stop()  # proxy.py logs a request when its connection closes
        demo.stop()
    _logged(forward_proxy, f"POST 127.0.0.1:{demo_port}/predict")  # it went through the proxy


def test_a_proxy_that_is_down_is_a_clear_502(tmp_path):
    demo = start_demo()
    config = write_config(tmp_path, {"demo": {"v1": demo.url}})
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = GatewayProcess(config, free_port(), env={"HTTP_PROXY": dead, "NO_PROXY": None, "no_proxy": None}).start()
    try:
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as client:
            r = client.post("/models/demo/predict", json={"applicant": {"id": "p-1"}}, headers=auth("client"))
            assert r.status_code == 502 and "cannot connect to the proxy 127.0.0.1" in r.json()["error"]["message"]
    finally:
        gateway.stop()
        demo.stop()


async def test_an_https_upstream_is_reached_through_a_connect_tunnel(tmp_path, forward_proxy, pki, monkeypatch):
    upstream_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    upstream_tls.load_cert_chain(pki["server"], pki["server_key"])
    echo = EchoUpstream()
    echo.server = await asyncio.start_server(echo._serve, "127.0.0.1", 0, ssl=upstream_tls)
    echo.port = echo.server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url)  # read when the gateway builds its routes
    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    version = {"upstream": f"https://127.0.0.1:{echo.port}/api", "tls": {"ca_bundle": str(pki["ca"])},
               "headers": {"authorization": "Bearer upstream-secret"}}
    try:
        async with serve_in_process(write_config(tmp_path, {"remote": {"v1": version}})) as gw:
            for i in range(3):  # the tunnel is a kept-alive connection like any other
                r = await gw.client.post(f"/models/remote/score?i={i}", json={"x": i}, headers=auth("client"))
                assert r.status_code == 200, r.text
                assert r.json()["path"] == "/api/score"
            seen = dict(echo.requests[-1].headers)
            assert seen["authorization"] == "Bearer upstream-secret"  # inside TLS: the proxy never saw it
        log = _logged(forward_proxy, f"CONNECT 127.0.0.1:{echo.port}")
        assert "upstream-secret" not in log and "/api/score" not in log
        assert echo.connections == 1
    finally:
        await echo.stop()
