"""Egress through a forward proxy, as `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` say.

The same variables httpx, aiohttp (`trust_env`), requests and curl read, with the
standard library's rules for matching `NO_PROXY` (host names, domain suffixes, host:port,
`*`). Plain-HTTP upstreams are reached by sending the request in absolute form to the
proxy; HTTPS upstreams through a `CONNECT` tunnel, with TLS to the upstream inside it, so
the proxy sees neither the request nor its credentials. Only `http://` proxies.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.upstream.connection import UpstreamError

_MAX_TUNNEL_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    host: str
    port: int
    authorization: bytes | None = None  # a Proxy-Authorization value, from the proxy URL's user info

    def __repr__(self) -> str:  # never the credentials
        return f"ForwardProxy({self.host}:{self.port})"


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> ForwardProxy | None:
    """The forward proxy that `url` goes through under these environment variables, or None."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment() if environ is None else _proxies(environ)
    chosen = proxies.get(parts.scheme) or proxies.get("all")
    if not chosen:
        return None
    host_port = parts.netloc.rsplit("@", 1)[-1]
    if _bypassed(host_port, proxies.get("no", "")):
        return None
    proxy = urlsplit(chosen if "://" in chosen else "http://" + chosen)
    if proxy.scheme != "http":
        raise ValueError(f"the proxy for {parts.scheme} upstreams is {proxy.scheme}://; only http:// proxies are supported")
    authorization = None
    if proxy.username is not None:
        token = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(token)
    return ForwardProxy(proxy.hostname or "localhost", proxy.port or 80, authorization)


def _proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """`getproxies_environment` over a given mapping (lower-case names win, as there)."""
    found: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy") and name.isupper():
            found[name[:-6].lower()] = value
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy") and name.islower():
            found[name[:-6]] = value
    return found


def _bypassed(host_port: str, no_proxy: str) -> bool:
    return bool(no_proxy) and bool(urllib.request.proxy_bypass_environment(host_port, {"no": no_proxy}))


async def open_tunnel(loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, proxy: ForwardProxy, host: str,
                      port: int, context: ssl.SSLContext) -> asyncio.Transport:
    """A TLS connection to host:port through the proxy's CONNECT tunnel, handed to `protocol`."""
    tunnel = _TunnelHead(loop)
    try:
        transport, _ = await loop.create_connection(lambda: tunnel, proxy.host, proxy.port)
    except OSError as exc:
        raise UpstreamError("connect", f"cannot connect to the proxy {proxy.host}:{proxy.port}: {exc.strerror or exc}",
                            reached=False) from None
    request = [b"CONNECT %s:%d HTTP/1.1\r\nhost: %s:%d\r\n" % (host.encode(), port, host.encode(), port)]
    if proxy.authorization:
        request.append(b"proxy-authorization: " + proxy.authorization + b"\r\n")
    transport.write(b"".join(request) + b"\r\n")
    try:
        status = await tunnel.status
    except BaseException:
        transport.abort()
        raise
    if status != 200:
        transport.abort()
        raise UpstreamError("connect", f"the proxy {proxy.host}:{proxy.port} refused a tunnel to {host}:{port} "
                                       f"(status {status})", reached=False)
    try:
        tls = await loop.start_tls(transport, protocol, context, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        transport.abort()
        raise UpstreamError("connect", f"TLS handshake with {host}:{port} through the proxy failed: {exc}",
                            reached=False) from None
    protocol.connection_made(tls)  # start_tls does not tell the protocol
    return tls  # type: ignore[return-value]


class _TunnelHead(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT (a status line and headers, no body)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: asyncio.Future[int] = loop.create_future()
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.status.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0:
            line = self.buffer.split(b"\r\n", 1)[0].split(b" ", 2)
            self.status.set_result(int(line[1]) if len(line) > 1 and line[1].isdigit() else 0)
        elif len(self.buffer) > _MAX_TUNNEL_HEAD:
            self.status.set_result(0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(UpstreamError("connect", "the proxy closed the connection during CONNECT",
                                                    reached=False))
