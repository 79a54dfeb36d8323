"""`gateway demo-model`: run the demo model upstream (quickstart, tests, benchmarks)."""

from __future__ import annotations

import argparse

from gateway.cli import CliError
from gateway.demo.switches import Switches, check

_DEFAULTS = Switches()

_DESCRIPTION = """\
A small, fast, deterministic model server to put the gateway in front of.
Endpoints: POST /v1/chat/completions (OpenAI-style, stream and logprobs),
POST /predict (credit decisions), GET /v1/models, GET /health; runtime control
for tests: GET /_demo/state, POST /_demo/config, POST /_demo/reset, GET /_demo/stats.
Prints one line, "demo-model NAME listening on http://HOST:PORT", once it accepts
connections (with --port 0 the kernel picks the port)."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo-model",
        help="run the demo model upstream",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on, 0 for any free one (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=_DEFAULTS.latency_ms, help="delay before every inference answer")
    parser.add_argument("--fail-rate", type=float, default=_DEFAULTS.fail_rate,
                        help="fraction of inference requests that fail, evenly spread and repeatable (0.25: every 4th)")
    parser.add_argument("--fail-status", type=int, default=_DEFAULTS.fail_status, help="HTTP status of those failures (default %(default)s)")
    parser.add_argument("--confidence", type=float, default=_DEFAULTS.confidence,
                        help="confidence reported with every answer, in (0, 1] (default %(default)s); "
                        "a request may force another with the header X-Demo-Confidence")
    parser.add_argument("--approval-rate", type=float, default=_DEFAULTS.approval_rate,
                        help="/predict approval rate for groups without a --skew (default %(default)s)")
    parser.add_argument("--skew", action="append", default=[], metavar="GROUP=APPROVAL_RATE",
                        help="approve applicants of GROUP at this rate instead (repeatable), e.g. --skew B=0.3")
    parser.add_argument("--stream-delay-ms", type=float, default=_DEFAULTS.stream_delay_ms,
                        help="pause between streamed events (default %(default)s)")
    parser.add_argument("--name", default=_DEFAULTS.name, help="model name in answers (default %(default)s)")
    parser.add_argument("--strict-name", action="store_true",
                        help="like vLLM: answer chat requests for --name only, 404 for any other model")
    parser.set_defaults(func=_run)


def _skew(items: list[str]) -> dict[str, float]:
    skew: dict[str, float] = {}
    for item in items:
        group, sep, rate = item.rpartition("=")
        if not sep or not group:
            raise CliError(f"--skew {item!r}: expected GROUP=APPROVAL_RATE, e.g. B=0.3", 2)
        try:
            skew[group] = check("approval_rate", float(rate), f"--skew {group}")
        except ValueError as exc:
            raise CliError(f"--skew {item!r}: {exc}", 2) from None
    return skew


def switches_from(args: argparse.Namespace) -> Switches:
    values = {
        "name": args.name,
        "latency_ms": args.latency_ms,
        "fail_rate": args.fail_rate,
        "fail_status": args.fail_status,
        "confidence": args.confidence,
        "approval_rate": args.approval_rate,
        "stream_delay_ms": args.stream_delay_ms,
        "strict_name": args.strict_name,
    }
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = check(key, value, "--" + key.replace("_", "-"))
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
    return Switches(**checked, skew=_skew(args.skew))


def _run(args: argparse.Namespace) -> int:
    switches = switches_from(args)
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}", 2)
    # Imported here so other commands do not pay for uvicorn.
    from gateway.demo.server import listen_socket, serve

    try:
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", 1) from None
    serve(switches, sock)
    return 0
