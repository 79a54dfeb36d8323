"""`serve --with-demo-model`: the demo model started beside the gateway, ending when the gateway ends."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.config import Config


class DemoModelError(RuntimeError):
    """The demo model cannot start where the config says it listens (one line for the CLI to print)."""


def die_with_parent() -> None:
    """In the demo model's process: the kernel sends it SIGTERM when the gateway's process ends, however it ends.

    uvicorn re-raises SIGTERM once it has shut down, which ends the gateway before any
    `finally` of ours runs; this way the demo model never outlives it.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_demo_model(config: Config) -> subprocess.Popen:
    """The demo model, at the address the config gives model `demo`, tied to this process's life."""
    model = config.models.get("demo")
    if model is None:
        raise DemoModelError("--with-demo-model needs a model named `demo` in the config")
    url = urlsplit(model.versions[model.initial_version].urls[0])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo-model", "--host", host, "--port", str(port)],
                            preexec_fn=die_with_parent)
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoModelError(f"the demo model exited with code {proc.returncode} (is port {port} free?)")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise DemoModelError(f"the demo model did not start listening on {host}:{port}")
