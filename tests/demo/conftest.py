"""The demo model as a real subprocess: `python -m gateway demo-model --port 0`.

The start line gives the URL (the kernel picks the port, so there is no race for a
"free" one). One process serves the whole package; every test starts from
`POST /_demo/reset`. Tests that need other start-up flags call `start_demo`, which
keeps stderr, so the package can check that nothing the tests did made the demo log
an error.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support import DemoModel
from tests.support import start_demo as start_demo_model

SERVER_ARGS = ["--name", "demo-test"]


def start_demo(*args: str) -> DemoModel:
    """A demo model that keeps its stderr, so the tests can see it wrote nothing there."""
    return start_demo_model(*args, keep_stderr=True)


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
