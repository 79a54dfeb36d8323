"""`gateway health`: ask a running gateway's /healthz at the address its config listens on.

The container's HEALTHCHECK runs it, so the check follows the config's `listen` (host,
port, TLS) instead of a port written into the image. One line of output; exit 0 when the
gateway answers healthy, 1 otherwise (a config it cannot read included), as Docker expects.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from gateway.configfile import ConfigError

HEALTHY, UNHEALTHY = 0, 1
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # listen on all: ask on loopback


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("health", help="check that the gateway its config describes answers /healthz")
    parser.add_argument("--config", "-c", default=os.environ.get("GATEWAY_CONFIG", "gateway.yaml"),
                        help="config file (default: $GATEWAY_CONFIG or gateway.yaml), read for listen host, port and TLS")
    parser.add_argument("--host", help="address to ask (overrides listen.host, as for `serve`)")
    parser.add_argument("--port", type=int, help="port to ask (overrides listen.port, as for `serve`)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default: 2)")
    parser.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    from gateway.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        more = f" (and {len(exc.problems) - 1} more: gateway config check)" if len(exc.problems) > 1 else ""
        print(f"unhealthy: cannot read the config: {exc.problems[0]}{more}")
        return UNHEALTHY
    port = args.port if args.port is not None else config.listen.port
    if port == 0:
        print(f"unhealthy: {args.config}: listen.port is 0 (a port the kernel picks): give --port")
        return UNHEALTHY
    url = health_url(args.host or config.listen.host, port, tls=config.listen.tls is not None)
    return _ask(url, args.timeout)


def health_url(host: str, port: int, *, tls: bool) -> str:
    """Where /healthz is: a wildcard listen address is asked on loopback, an IPv6 address in brackets."""
    host = _WILDCARDS.get(host, host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name
    return f"{'https' if tls else 'http'}://{host}:{port}/healthz"


def _ask(url: str, timeout: float) -> int:
    import httpx

    # The question is whether this process serves, not whether its certificate names 127.0.0.1;
    # and never through a proxy from the environment (HTTPS_PROXY is for upstreams).
    try:
        response = httpx.get(url, timeout=timeout, verify=False, trust_env=False)
    except httpx.HTTPError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print(f"unhealthy: {url}: no answer: {exc.__class__.__name__}{': ' + detail if detail else ''}")
        return UNHEALTHY
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        status = None
    if response.status_code == 200 and status == "ok":
        print(f"healthy: {url} answered 200 ok")
        return HEALTHY
    print(f"unhealthy: {url} answered {response.status_code}{' ' + repr(status) if status else ''} "
          f"(not the gateway's 200 ok)")
    return UNHEALTHY

