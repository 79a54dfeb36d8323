"""The `gateway` command line.

Each command group lives in its own module under `gateway.cli` and exposes
`register(subparsers)`, which adds its parser and sets `func` on it. `func(args)`
returns the exit code. A `CliError` (or any expected failure) becomes one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
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


class CliError(Exception):
    """An expected failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as argparse does, minus the usage dump
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="Oversight gateway: human oversight on the network path.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
