"""`gateway token new`: make a token and the config line that admits it."""

from __future__ import annotations

import argparse
import re

from gateway.auth import new_token
from gateway.cli import CliError
from gateway.config import ROLES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("token", help="make access tokens")
    tsub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    new = tsub.add_parser("new", help="print a new token and its config entry")
    new.add_argument("--role", required=True, choices=ROLES)
    new.add_argument("--id", required=True, help="a name for the token, used in logs and records")
    new.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.id):
        raise CliError(f"--id {args.id!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    token, digest = new_token()
    print(f"token: {token}")
    print("# add to `tokens:` in the config (the token itself is not stored anywhere):")
    print(f"  - {{id: {args.id}, role: {args.role}, sha256: {digest}}}")
    return 0
