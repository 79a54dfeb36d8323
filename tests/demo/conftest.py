"""The demo model as a real subprocess: `python -m gateway demo-model --port 0`.

The start line gives the URL (the kernel picks the port, so there is no race for a
"free" one). One process serves the whole package; every test starts from
`POST /_demo/reset`. Tests that need other start-up flags call `start_demo`.
Unlike tests/support.py's `start_demo`, this one keeps stderr, so the package can
check that nothing the tests did made the demo log an error.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from gateway.demo import START_LINE_RE

SERVER_ARGS = ["--name", "demo-test"]


@dataclass
class DemoProcess:
    proc: subprocess.Popen
    url: str
    start_line: str
    stderr: str = ""

    def stop(self) -> str:
        """Stop the server; returns what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stderr += self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.stderr


def start_demo(*args: str, timeout: float = 10.0) -> DemoProcess:
    cmd = [sys.executable, "-m", "gateway", "demo-model", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if ready:
            line = proc.stdout.readline().rstrip("\n")
            if line:
                match = START_LINE_RE.match(line)
                if not match:
                    proc.kill()
                    raise AssertionError(f"unexpected start line {line!r}")
                return DemoProcess(proc, match["url"], line)
        if proc.poll() is not None or remaining <= 0:
            proc.kill()
            err = proc.stderr.read()
            raise AssertionError(f"demo model did not start (exit {proc.poll()}): {err}")


@pytest.fixture(scope="package")
def demo_server():
    server = start_demo(*SERVER_ARGS)
    yield server
    stderr = server.stop()
    # The demo logs only warnings and errors, and nothing the tests did (resets and
    # hangs included) may cause one.
    assert stderr == "", stderr


@pytest.fixture
def client(demo_server):
    """A client on the shared demo model, switched back to its start-up state.

    (Named `client`, not `demo`: tests/conftest.py has a `demo` fixture of its own.)
    """
    with httpx.Client(base_url=demo_server.url, timeout=5) as client:
        # Let requests a previous test left behind finish first, so they cannot count here.
        assert wait_for(lambda: client.get("/_demo/stats").json()["in_flight"] == 0)
        assert client.post("/_demo/reset").status_code == 200
        yield client


def wait_for(predicate, timeout: float = 3.0, interval: float = 0.02):
    """Poll until predicate() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
