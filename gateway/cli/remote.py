"""Talking to a running gateway from the CLI: `--url`/`GATEWAY_URL` and `GATEWAY_TOKEN`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gateway.cli import CliError


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
                        help="the gateway (default: $GATEWAY_URL or http://127.0.0.1:8080)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
    """One request with the token from GATEWAY_TOKEN; a refusal becomes a one-line error (exit 1)."""
    import httpx

    token = os.environ.get("GATEWAY_TOKEN")
    if not token:
        raise CliError("set GATEWAY_TOKEN to a token with the right role (operator for levels, reviewer for review)")
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body,
                                 headers={"authorization": f"Bearer {token}"}, timeout=30)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the gateway at {args.url}: {exc.__class__.__name__}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = {"body": response.text}
    if response.status_code not in ok:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise CliError(f"{response.status_code} {error.get('type', 'error')}: {error.get('message', response.text)}", 1)
    return data


def show(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(text)
