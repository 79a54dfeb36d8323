"""`gateway serve --with-demo-model` stopped by SIGTERM (or killed) takes its demo model with it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support import free_port, wait_port, write_config


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_demo_model_does_not_outlive_the_gateway(tmp_path, sig):
    demo_port, gw_port = free_port(), free_port()
    config = write_config(tmp_path, {"demo": {"v1": f"http://127.0.0.1:{demo_port}"}})
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(gw_port),
                             "--with-demo-model"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(gw_port, proc, 20)
        assert _listening(demo_port)
        proc.send_signal(sig)
        proc.wait(15)
        deadline = time.monotonic() + 5
        while _listening(demo_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _listening(demo_port), "the demo model is still running"
    finally:
        if proc.poll() is None:
            proc.kill()
