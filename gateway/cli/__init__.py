"""The `gateway` command line.

Each command group lives in its own module under `gateway.cli` and exposes
`register(subparsers)`, which adds its parser and sets `func` on it. `func(args)`
returns the exit code. A `CliError` (or any expected failure) becomes one line on
stderr and a non-zero exit, never a traceback.

Exit codes, the same for every command (`EXIT_CODES_HELP` words them for `--help`):
0 done; 1 a refusal or an invalid result (the gateway said no, a signature or log does
not verify); 2 usage (bad arguments, a missing token, a file that cannot be read or used);
3 cannot reach the gateway; 4 not authorised (the gateway answered 401 or 403);
130 interrupted; 141 the reader of stdout went away (`gateway ... | head`), as for a
program killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = [
    "gateway.cli.serve",
    "gateway.cli.health",
    "gateway.cli.config_cmd",
    "gateway.cli.token",
    "gateway.cli.demo",
    "gateway.cli.evidence",
    "gateway.cli.model",
    "gateway.cli.level",
    "gateway.cli.review",
    "gateway.cli.versions",
    "gateway.cli.incident",
]

OK, REFUSED, USAGE, UNREACHABLE, UNAUTHORISED = 0, 1, 2, 3, 4
INTERRUPTED, CLOSED_PIPE = 130, 141

EXIT_CODES_HELP = """\
exit codes:
  0    done
  1    a refusal or an invalid result (the gateway said no; a signature or log does not verify)
  2    usage: bad arguments, no token, a file that cannot be read or used
  3    cannot reach the gateway
  4    not authorised: the gateway refused the token (401) or its role (403)
  130  interrupted
  141  stdout was closed early (e.g. `gateway ... --json | head`)"""

ENVIRONMENT_HELP = """\
environment:
  GATEWAY_URL     the gateway remote commands talk to (default http://127.0.0.1:8080)
  GATEWAY_TOKEN   the token remote commands send; use it or --token-file rather than --token (seen in `ps`)
  GATEWAY_CONFIG  the config file of serve, health and config show (default gateway.yaml)"""


class CliError(Exception):
    """An expected failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def status_code_exit(status: int) -> int:
    """The exit code for a gateway's refusal with HTTP `status`: 4 for 401/403, else 1."""
    return UNAUTHORISED if status in (401, 403) else REFUSED


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as argparse does, minus the usage dump
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)", USAGE)


def build_parser() -> argparse.ArgumentParser:
    from gateway import __version__

    parser = _Parser(prog="gateway", description="Oversight gateway: human oversight on the network path.",
                     epilog=f"{EXIT_CODES_HELP}\n\n{ENVIRONMENT_HELP}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            code = _run(argv)
        except SystemExit:  # --help and --version print, then exit
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return CLOSED_PIPE


def _run(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return USAGE
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return INTERRUPTED


def _discard_stdout() -> None:
    """The reader left: point stdout at /dev/null so the flush at exit does not raise again (Python docs, SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture): nothing to flush at exit
        pass
