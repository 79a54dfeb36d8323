"""`gateway serve`: run the gateway (one process, or `--workers N` on one port; replicas with a shared Redis store)."""

from __future__ import annotations

import argparse
import os
import sys

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
    from gateway.demo.launch import DemoModelError

    try:
        return _serve_with(args)
    except DemoModelError as exc:
        raise CliError(str(exc)) from None


def _serve_with(args: argparse.Namespace) -> int:
    if args.worker_socket is not None or args.workers > 1:
        from gateway import supervisor

        return supervisor.run_worker(args) if args.worker_socket is not None else supervisor.serve_workers(args)
    import uvicorn

    from gateway.demo.launch import start_demo_model
    from gateway.serving import server_config

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
    demo = start_demo_model(gateway.config) if args.with_demo_model else None
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
