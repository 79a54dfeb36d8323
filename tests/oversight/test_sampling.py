"""Post-hoc sampling: the policy's rate, decided by the request id, recomputable by an auditor."""

from __future__ import annotations

import asyncio
import math

from gateway.oversight.sampling import is_sampled, sample_point
from tests.support import auth, eventually


def test_sampling_is_a_pure_function_of_id_and_key():
    key = bytes(16)
    ids = [f"req-{i}".encode() for i in range(20_000)]
    first = [is_sampled(i, 0.02, key) for i in ids]
    assert first == [is_sampled(i, 0.02, key) for i in ids]
    assert abs(sum(first) - 400) < 4 * math.sqrt(20_000 * 0.02 * 0.98)
    other_key = [is_sampled(i, 0.02, b"\x01" * 16) for i in ids]
    assert first != other_key  # a client that does not know the key cannot steer around the sample
    assert all(0.0 <= sample_point(i, key) < 1.0 for i in ids[:100])
    assert not any(is_sampled(i, 0.0, key) for i in ids[:100]) and all(is_sampled(i, 1.0, key) for i in ids[:100])


async def test_5000_requests_at_level_0_sample_the_policy_rate(make_gateway, demo):
    n, rate = 5000, 0.02
    async with make_gateway() as gw:
        limit = asyncio.Semaphore(32)

        async def one(i: int):
            async with limit:
                r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": f"s-{i}"}},
                                         headers={**auth("client"), "x-request-id": f"sample-test-{i}"})
                assert r.status_code == 200
                return r.headers["x-request-id"], r.headers["x-oversight-route"]

        results = await asyncio.gather(*(one(i) for i in range(n)))
        sampled = {rid for rid, route in results if route == "sampled"}
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(len(sampled) - n * rate) <= 4 * sigma, len(sampled)
        key = gw.gateway.sampling_key  # an auditor gets it from the evidence export
        assert sampled == {rid for rid, _ in results if is_sampled(rid.encode(), rate, key)}

        async def all_queued():
            tickets = (await gw.client.get("/review/tickets", params={"kind": "sample", "limit": 500},
                                           headers=auth("reviewer"))).json()["tickets"]
            return tickets if len(tickets) == len(sampled) else None

        tickets = await eventually(all_queued, timeout=10)
        assert {t["request_id"] for t in tickets} == sampled
    assert demo.stats()["requests"] == n
