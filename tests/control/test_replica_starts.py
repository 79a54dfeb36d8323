"""Replicas starting together on one Redis agree on the state: none believes the store lost its data.

The heartbeat compares the store's epoch with the epoch it reported, not with one the
change feed raised while the heartbeat was in flight; and a heartbeat that fails in an
unexpected way is logged and tried again, so a replica never sits at the fail-closed level
without saying so.
"""

from __future__ import annotations

import concurrent.futures

import httpx

from tests.support import GatewayProcess, auth, free_port, write_config

ROUNDS = 5


def test_replicas_started_together_never_restore_a_store_that_lost_nothing(tmp_path, redis_server, demo):
    for round_ in range(ROUNDS):
        redis_server.flush()
        config = write_config(tmp_path / f"round-{round_}", {"demo": {"v1": demo.url}}, store=redis_server.url,
                              policy={"oversight": {"max_staleness": "1s"}})
        replicas = [GatewayProcess(config, free_port()) for _ in range(3)]
        try:
            with concurrent.futures.ThreadPoolExecutor(3) as pool:  # inside the try: one that fails to start
                list(pool.map(lambda replica: replica.start(), replicas))  # must not leave the others running
            for replica in replicas:
                for _ in range(10):  # a few heartbeats of each
                    r = httpx.post(f"{replica.url}/models/demo/predict", json={"applicant": {"id": "s"}},
                                   headers=auth("client"), timeout=10)
                    assert r.status_code == 200 and r.headers["x-oversight-level"] == "0", (round_, r.text)
                assert httpx.get(f"{replica.url}/readyz", timeout=10).json()["status"] == "ready"
        finally:
            for replica in replicas:
                replica.stop()
        for replica in replicas:
            log = replica.log()
            assert "lost its data" not in log, (round_, log[-2000:])
            assert "cannot confirm control state" not in log, (round_, log[-2000:])
