"""What must be recorded is in the operating system before the client can hold a complete answer.

At level 1 every decision is recorded. The evidence log lives on a small filesystem that
is then filled (a real tmpfs, mounted by the test), so recording fails: no client may get
a complete answer, whatever the framing — a body with Content-Length, a chunked body, an
OpenAI event stream — and the gateway says why in its log.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.proxy.echo import EchoUpstream
from tests.rawhttp import RawUpstream
from tests.support import GatewayProcess, auth, free_port, write_config


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs for the evidence log (the tests run as root in CI; mount must work here)."""
    mount = tmp_path / "evidence"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test ({done.stderr.strip()}); run the tests as root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> None:
    """Fill the filesystem until it refuses another byte."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse_script(head: bytes) -> list:
    """An OpenAI-style event stream, event by event, with pauses (so the gateway relays it as it comes)."""
    event = _chunk(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
    return [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n", 0.05,
            event, 0.05, event, 0.05, _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"]


async def test_a_full_disk_never_lets_a_complete_answer_out(tmp_path, small_disk):
    echo = await EchoUpstream().start()
    sse = await RawUpstream(_sse_script).start()
    config = write_config(tmp_path / "gw", {"echo": {"e1": echo.url}, "chat": {"c1": sse.url}},
                          extra={"evidence": {"directory": str(small_disk)}})
    gateway = GatewayProcess(config, free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            r = await client.put("/admin/oversight/global", json={"level": 1, "reason": "record all"}, headers=auth("operator"))
            assert r.status_code == 200
            ok = await client.get("/models/echo/big?size=200000", headers=auth("client"))
            assert ok.status_code == 200 and len(ok.content) == 200000  # recorded, then served whole
            _fill(small_disk)
            outcomes = []
            for path, body in (("/models/echo/big?size=300000", None),  # Content-Length, streamed through
                               ("/models/echo/echo", None),  # complete at its headers
                               ("/v1/chat/completions", {"model": "chat", "stream": True, "messages": []})):  # SSE
                received = b""
                try:
                    async with client.stream("POST" if body else "GET", path, json=body, headers=auth("client")) as r:
                        async for piece in r.aiter_raw():
                            received += piece
                    outcomes.append((path, r.status_code, received.decode()[:300]))
                except httpx.HTTPError as exc:  # the answer broke off: nobody mistakes it for complete
                    outcomes.append((path, "broken", type(exc).__name__))
                assert b"[DONE]" not in received  # the event that says "complete" never left
        for path, status, detail in outcomes:
            assert status in ("broken", 503), (path, status, detail)
            if status == 503:
                assert "evidence_unavailable" in detail or "recorded" in detail, (path, detail)
        assert not any(status == 200 for _, status, _ in outcomes)
        assert "cannot record evidence" in gateway.log()
    finally:
        gateway.stop()
        await echo.stop()
        await sse.stop()
