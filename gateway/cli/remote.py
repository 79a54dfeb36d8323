"""Talking to a running gateway from the CLI: `--url`/`GATEWAY_URL` and `GATEWAY_TOKEN`.

Whatever answers — the gateway, a load balancer's HTML page, nothing at all — the
command ends with its output or with one line saying what went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from gateway.cli import CliError


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
                        help="the gateway (default: $GATEWAY_URL or http://127.0.0.1:8080)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")


def token() -> str:
    value = os.environ.get("GATEWAY_TOKEN", "")
    if not value:
        raise CliError("set GATEWAY_TOKEN to a token with the right role (operator for levels, reviewer for review)")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise CliError("GATEWAY_TOKEN is not a token (it has spaces, control or non-ASCII characters)")
    return value


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
         ok: tuple[int, ...] = (200, 201, 202)) -> dict[str, Any]:
    """One request with the token from GATEWAY_TOKEN; a refusal becomes a one-line error (exit 1)."""
    import httpx

    secret = token()
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body, params=params,
                                 headers={"authorization": f"Bearer {secret}"}, timeout=30)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise CliError(f"cannot reach the gateway at {args.url}: {exc.__class__.__name__}: {_line(str(exc))}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code not in ok:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            raise CliError(f"{response.status_code} {error.get('type', 'error')}: {_line(str(error.get('message', '')))}", 1)
        detail = error if isinstance(error, str) else response.text
        raise CliError(f"{response.status_code} error: {_line(detail) or response.reason_phrase}", 1)
    if not isinstance(data, dict):
        raise CliError(f"{args.url} answered {response.status_code} with something that is not the gateway's JSON "
                       f"(is --url the gateway?)", 1)
    return data


def show(args: argparse.Namespace, data: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """Print the answer as JSON (--json) or as `render` words it."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2)
        print()
        return
    try:
        text = render(data)
    except (KeyError, TypeError, AttributeError, IndexError):
        raise CliError("unexpected answer: not what this command expects (is --url the gateway, of this version?)", 1) from None
    print(text)


def _line(text: str, limit: int = 200) -> str:
    """The first non-empty line of a text, shortened: errors stay one line."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""
