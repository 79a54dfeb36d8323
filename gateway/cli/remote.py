"""Talking to a running gateway from the CLI: `--url`/`GATEWAY_URL` and `--token`, `--token-file` or `GATEWAY_TOKEN`.

Whatever answers — the gateway, a load balancer's HTML page, nothing at all — the
command ends with its output or with one line saying what went wrong. The token is
sent, never printed: no error message quotes it.

Exit codes (gateway.cli): 1 the gateway refused, 2 usage (no usable token), 3 cannot
reach the gateway, 4 the gateway answered 401 or 403.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from gateway.cli import ENVIRONMENT_HELP, EXIT_CODES_HELP, REFUSED, UNREACHABLE, USAGE, CliError, status_code_exit

DEFAULT_URL = "http://127.0.0.1:8080"


def add_remote_arguments(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_URL),
                        help=f"the gateway (default: $GATEWAY_URL or {DEFAULT_URL})")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--token", metavar="TOKEN",
                        help="the token to send (default: $GATEWAY_TOKEN); visible to others in `ps`: "
                             "prefer $GATEWAY_TOKEN or --token-file")
    secret.add_argument("--token-file", metavar="FILE",
                        help="read the token from FILE (its first line), e.g. a mounted secret")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer (times as unix seconds)")
    parser.epilog = "\n\n".join(filter(None, (parser.epilog, ENVIRONMENT_HELP, EXIT_CODES_HELP)))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def token(args: argparse.Namespace | None = None) -> str:
    """The token from --token, --token-file or GATEWAY_TOKEN (in that order), checked to be one."""
    given, where = getattr(args, "token", None), "--token"
    path = getattr(args, "token_file", None)
    if not given and path:
        where = f"--token-file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                given = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc.__class__.__name__}",
                           USAGE) from None
        if not given:
            raise CliError(f"{where} is empty", USAGE)
    if not given:
        given, where = os.environ.get("GATEWAY_TOKEN", ""), "GATEWAY_TOKEN"
    if not given:
        raise CliError("set GATEWAY_TOKEN (or give --token-file) to a token with the right role "
                       "(operator for levels, reviewer for review)", USAGE)
    if not given.isascii() or not given.isprintable() or " " in given:
        raise CliError(f"{where} is not a token (it has spaces, control or non-ASCII characters)", USAGE)
    return given


def unreachable(args: argparse.Namespace, exc: Exception) -> CliError:
    """No answer (exit 3); a --url that is no URL at all is a usage error (exit 2)."""
    import httpx

    code = USAGE if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError)) else UNREACHABLE
    return CliError(f"cannot reach the gateway at {args.url}: {exc.__class__.__name__}: {_line(str(exc))}", code)


def refusal(status: int, reason: str, data: Any, text: str) -> CliError:
    """The gateway's (or whatever answered's) refusal as one line, with its exit code."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return CliError(f"{status} {error.get('type', 'error')}: {_line(str(error.get('message', '')))}", status_code_exit(status))
    detail = error if isinstance(error, str) else text
    return CliError(f"{status} error: {_line(detail) or reason}", status_code_exit(status))


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
         ok: tuple[int, ...] = (200, 201, 202)) -> dict[str, Any]:
    """One request with the token; a refusal becomes a one-line error (exit 1, or 4 for 401/403)."""
    import httpx

    secret = token(args)
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body, params=params,
                                 headers={"authorization": f"Bearer {secret}"}, timeout=30)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise unreachable(args, exc) from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code not in ok:
        raise refusal(response.status_code, response.reason_phrase, data, response.text)
    if not isinstance(data, dict):
        raise CliError(f"{args.url} answered {response.status_code} with something that is not the gateway's JSON "
                       f"(is --url the gateway?)", REFUSED)
    return data


def show(args: argparse.Namespace, data: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """Print the answer as JSON (--json) or as `render` words it."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2)
        print()
        return
    try:
        text = render(data)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError, OSError):
        raise CliError("unexpected answer: not what this command expects (is --url the gateway, of this version?)",
                       REFUSED) from None
    print(text)


def when(at: float | None) -> str:
    """A unix time for people: ISO 8601 in UTC, to the second (`2026-11-27T10:00:00Z`), as the logs write it; `-` for none."""
    if not at:
        return "-"
    return datetime.fromtimestamp(float(at), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(text: str, limit: int = 200) -> str:
    """The first non-empty line of a text, shortened: errors stay one line."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""
