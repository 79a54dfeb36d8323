"""The JSON log (gateway/logs.py): one object per line, a logged exception keeps its traceback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import httpx

from gateway.logs import JsonFormatter
from tests.support import auth, dies_with_tests, free_port, wait_port, write_config

# A gateway process whose planner has a defect: the data plane logs it with its traceback.
_DEFECTIVE = """
import sys
from gateway.oversight.plan import Planner

def plan(self, model, level):
    raise RuntimeError("a planted defect")

Planner.plan = plan
from gateway.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_a_defect_in_a_real_gateway_is_one_json_line_with_its_traceback(tmp_path):
    config = write_config(tmp_path, {"demo": {"v1": f"http://127.0.0.1:{free_port()}"}})
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _DEFECTIVE, "serve", "--config", str(config), "--port", str(port)],
                                stdout=log, stderr=log, preexec_fn=dies_with_tests())
    try:
        wait_port(port, proc, 30)
        r = httpx.post(f"http://127.0.0.1:{port}/models/demo/predict", json={"applicant": {"id": "x"}},
                       headers=auth("client"), timeout=10)
        assert r.status_code == 500 and "a planted defect" not in r.text and "Traceback" not in r.text
    finally:
        proc.terminate()
        proc.wait(15)
    lines = log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    defect = [e for e in events if e["msg"] == "unexpected failure on the data plane"]
    assert len(defect) == 1, lines
    event = defect[0]
    assert event["level"] == "error" and event["error"] == "RuntimeError: a planted defect"
    assert event["request_id"] == r.headers["x-request-id"]
    trace = event["traceback"]
    assert trace.startswith("Traceback (most recent call last):\n") and trace.endswith("RuntimeError: a planted defect")
    assert 'line 6, in plan' in trace and "gateway/proxy/dataplane.py" in trace  # where it was raised, and from where


def test_the_formatter_keeps_chained_causes_and_stack_info():
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            raise ValueError("while reading") from exc
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(),
                                                   sinfo="Stack (most recent call last):\n  here")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["error"] == "ValueError: while reading"
    assert "KeyError: 'missing'" in out["traceback"] and "direct cause" in out["traceback"]
    assert out["stack"].startswith("Stack (most recent call last)")
