"""Three replicas on one Redis see the traffic together: a threshold crossed only in total opens one incident."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support import GatewayProcess, auth, free_port, write_config


def test_three_thirds_of_a_failing_mix_open_exactly_one_incident(tmp_path, redis_url, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, store=redis_url,
                          policy={"triggers": {"evaluate_every": "1s"}})
    replicas = [GatewayProcess(config, free_port()).start() for _ in range(3)]
    try:
        demo.configure(fail_rate=1 / 30, fail_status=502)  # 2 of each replica's 60: 3.3 %
        # each replica alone carries 60 requests, below the trigger's minimum of 100; together 180

        def send(replica_and_i):
            replica, i = replica_and_i
            return httpx.post(f"{replica.url}/models/demo/predict", json={"applicant": {"id": f"r{i}"}},
                              headers=auth("client"), timeout=30).status_code

        jobs = [(replicas[i % 3], i) for i in range(180)]
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(send, jobs))
        assert statuses.count(502) == 6 and len(statuses) == 180
        deadline = time.monotonic() + 20
        incidents: list = []
        while time.monotonic() < deadline and not incidents:
            incidents = httpx.get(f"{replicas[0].url}/admin/incidents", headers=auth("operator")).json()["incidents"]
            time.sleep(0.2)
        time.sleep(3)  # every replica evaluates a few more times
        for replica in replicas:
            seen = httpx.get(f"{replica.url}/admin/incidents", headers=auth("operator")).json()["incidents"]
            assert [(i["trigger"], i["model"]) for i in seen] == [("error_rate", "demo")], replica.log()[-2000:]
        incident = seen[0]
        # opened once the sum over the replicas reached the minimum: more than any one replica carried
        assert 100 <= incident["values"]["requests"] <= 180 and incident["values"]["error_rate"] > 0.01
        level = httpx.get(f"{replicas[2].url}/admin/oversight", headers=auth("operator")).json()["models"]["demo"]["level"]
        assert level == 1
    finally:
        for replica in replicas:
            replica.stop()
