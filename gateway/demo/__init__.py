"""The demo model: a small, fast, deterministic inference server to put the gateway in front of.

Run it with `gateway demo-model` (see `gateway.cli.demo`). It speaks OpenAI chat
completions (`POST /v1/chat/completions`, streaming and logprobs included) and a
generic JSON credit-decision model (`POST /predict`), reports a confidence with
every answer, and can be told at runtime (`POST /_demo/config`) to be slow, fail,
hang or reset connections, so the gateway's tests and benchmarks have a real
upstream to drive. `GET /_demo/stats` counts what reached it.

Modules: `switches` (settings, validation, counters), `model` (the deterministic
answers), `asgi` (the pure ASGI app), `server` (socket, uvicorn, start line).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DemoApp", "START_LINE_RE", "Switches", "app", "listen_socket", "serve"]

_EXPORTS = {
    "DemoApp": "gateway.demo.asgi",
    "Switches": "gateway.demo.switches",
    "START_LINE_RE": "gateway.demo.server",
    "listen_socket": "gateway.demo.server",
    "serve": "gateway.demo.server",
}
_app = None


def __getattr__(name: str) -> Any:
    # Lazy, so `gateway --help` and the other commands do not import uvicorn.
    global _app
    if name == "app":  # for `uvicorn gateway.demo:app`; the CLI builds its own from the flags
        if _app is None:
            from gateway.demo.asgi import DemoApp

            _app = DemoApp()
        return _app
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gateway.demo' has no attribute {name!r}")
