"""`gateway demo-model` on the command line: start line, flags, one-line errors."""

from __future__ import annotations

import socket

import httpx
import pytest

from gateway.cli import main
from gateway.demo import START_LINE_RE
from tests.demo.conftest import start_demo


def test_start_line_names_the_model_and_url(demo_server):
    match = START_LINE_RE.match(demo_server.start_line)
    assert match and match["name"] == "demo-test"
    assert match["url"] == demo_server.url and demo_server.url.startswith("http://127.0.0.1:")
    assert not demo_server.url.endswith(":0")


def test_flags_set_the_start_up_switches():
    server = start_demo("--latency-ms", "5", "--fail-rate", "0.5", "--fail-status", "502",
                        "--confidence", "0.61", "--stream-delay-ms", "7", "--name", "flagged", "--strict-name")
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            state = client.get("/_demo/state").json()
            assert state == {"name": "flagged", "latency_ms": 5.0, "fail_rate": 0.5, "fail_status": 502,
                             "confidence": 0.61, "approval_rate": 0.7, "skew": {}, "stream_delay_ms": 7.0,
                             "hang": False, "reset": False, "strict_name": True}
            statuses = [client.post("/predict", json={"applicant": {"id": i}}).status_code for i in range(4)]
            assert statuses == [200, 502, 200, 502]
    finally:
        assert "Traceback" not in server.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fail-rate", "2"], "--fail-rate must be between 0 and 1"),
        (["--confidence", "0"], "--confidence must be in (0, 1]"),
        (["--skew", "B"], "expected GROUP=APPROVAL_RATE"),
        (["--skew", "B=1.2"], "between 0 and 1"),
        (["--fail-status", "200"], "--fail-status must be an HTTP error status"),
        (["--port", "70000"], "--port must be 0..65535"),
        (["--latency-ms", "soon"], "invalid float value"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message, capsys):
    assert main(["demo-model", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_busy_port_is_a_one_line_error(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["demo-model", "--port", str(busy.getsockname()[1])]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1, err
