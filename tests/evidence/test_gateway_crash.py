"""kill -9 under load: every answer a client received a 2xx for has its record, and the log verifies."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from gateway.evidence.log import EvidenceLog
from gateway.evidence.verify import verify_log
from tests.support import GatewayProcess, auth, free_port, write_config


def test_a_killed_gateway_loses_no_acknowledged_record(tmp_path, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, policy={"oversight": {"initial_level": 1}})
    gateway = GatewayProcess(config, free_port()).start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=gateway.url, headers=auth("client"), timeout=5) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = client.post("/models/demo/predict", json={"applicant": {"id": f"crash-{worker}-{i}"}})
                except httpx.HTTPError:
                    continue  # the gateway died mid-request: nothing was acknowledged
                if 200 <= r.status_code < 300:
                    assert r.headers["x-oversight-level"] == "1"
                    acknowledged.append(r.headers["x-request-id"])

    workers = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    gateway.stop(signal.SIGKILL)
    stop.set()
    for w in workers:
        w.join(10)
    assert len(acknowledged) > 50

    gateway.start()  # the same port: it takes up its own log again and repairs a torn tail
    try:
        r = httpx.post(f"{gateway.url}/models/demo/predict", json={"applicant": {"id": "after"}}, headers=auth("client"))
        assert r.status_code == 200
    finally:
        gateway.stop()

    directory = tmp_path / "data" / "evidence" / "replica-0"
    report = verify_log(directory)
    assert report.ok, report.summary()
    log = EvidenceLog.open(directory)
    try:
        missing = [rid for rid in acknowledged if not log.find(rid)]
    finally:
        log.close()
    assert missing == []
