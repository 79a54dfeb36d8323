"""`gateway serve`: run the gateway (one process, or `--workers N` on one port; replicas with a shared Redis store)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from urllib.parse import urlsplit

from gateway.cli import CliError
from gateway.configfile import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the gateway")
    parser.add_argument("--config", "-c", default=os.environ.get("GATEWAY_CONFIG", "gateway.yaml"),
                        help="config file (default: $GATEWAY_CONFIG or gateway.yaml)")
    parser.add_argument("--host", help="listen address (overrides listen.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    parser.add_argument("--with-demo-model", action="store_true",
                        help="also start the demo model at the upstream address the config gives model `demo`")
    parser.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                        help="worker processes serving one port, each a replica, restarted if they die (default: 1)")
    parser.add_argument("--worker-socket", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    parser.add_argument("--worker-ready", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=_serve)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of workers from 1 to 64 (got {text!r})")
    return count


def _serve(args: argparse.Namespace) -> int:
    if args.worker_socket is not None or args.workers > 1:
        from gateway import supervisor

        return supervisor.run_worker(args) if args.worker_socket is not None else supervisor.serve_workers(args)
    import uvicorn

    from gateway.app import GatewayApp
    from gateway.wiring import Gateway
    from gateway.logs import setup_logging

    try:
        gateway = Gateway.from_files(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    config = gateway.config
    setup_logging(config.logging.level)
    demo = _start_demo_model(gateway) if args.with_demo_model else None
    server = uvicorn.Server(server_config(GatewayApp(gateway), host=args.host, port=args.port))
    try:
        server.run()
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(5)
    if not server.started:
        print("error: the gateway did not start; the log line above says why", file=sys.stderr)
        return 1
    return 0


def server_config(app, *, host: str | None = None, port: int | None = None):
    """How uvicorn runs the gateway: one worker, uvloop, httptools with the gateway's read limits, TLS from the config."""
    import uvicorn

    from gateway.serving import ReadLimits, protocol_with

    config = app.gateway.config
    tls = config.listen.tls
    return uvicorn.Config(
        app,
        host=host or config.listen.host,
        port=port if port is not None else config.listen.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=protocol_with(ReadLimits(max_header_bytes=config.limits.max_header_bytes,
                                      max_headers=config.limits.max_headers, max_url_bytes=config.limits.max_url_bytes,
                                      header_seconds=config.timeouts.client_header,
                                      body_seconds=config.timeouts.client_body)),
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the gateway is the edge: it adds X-Forwarded-For, it does not trust it
        log_config=None,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        timeout_graceful_shutdown=10,
    )


def _die_with_parent() -> None:
    """In the demo model's process: the kernel sends it SIGTERM when the gateway's process ends, however it ends.

    uvicorn re-raises SIGTERM once it has shut down, which ends the gateway before any
    `finally` of ours runs; this way the demo model never outlives it.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_demo_model(gateway) -> subprocess.Popen:
    model = gateway.config.models.get("demo")
    if model is None:
        raise CliError("--with-demo-model needs a model named `demo` in the config")
    url = urlsplit(model.versions[model.initial_version].urls[0])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo-model", "--host", host, "--port", str(port)],
                            preexec_fn=_die_with_parent)
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"the demo model exited with code {proc.returncode} (is port {port} free?)")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise CliError(f"the demo model did not start listening on {host}:{port}")
