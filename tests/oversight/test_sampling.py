"""Post-hoc sampling: the policy's rate, from a random draw no client can steer, recomputable by an auditor."""

from __future__ import annotations

import asyncio
import math

from gateway.oversight.sampling import DRAW_BYTES, draw, is_sampled, sample_point
from tests.support import auth, eventually


def test_sampling_is_a_pure_function_of_the_draw_and_the_key():
    key = bytes(16)
    draws = [draw() for _ in range(20_000)]
    assert len(set(draws)) == len(draws) and all(len(d) == DRAW_BYTES for d in draws)
    first = [is_sampled(d, 0.02, key) for d in draws]
    assert first == [is_sampled(d, 0.02, key) for d in draws]
    assert abs(sum(first) - 400) < 4 * math.sqrt(20_000 * 0.02 * 0.98)
    assert first != [is_sampled(d, 0.02, b"\x01" * 16) for d in draws]
    assert all(0.0 <= sample_point(d, key) < 1.0 for d in draws[:100])
    assert not any(is_sampled(d, 0.0, key) for d in draws[:100]) and all(is_sampled(d, 1.0, key) for d in draws[:100])


async def _records(gw, request_id: str) -> list[dict]:
    r = await gw.client.get(f"/admin/evidence/{request_id}", headers=auth("auditor"))
    return [entry["record"] for entry in r.json()["records"]] if r.status_code == 200 else []


async def test_5000_requests_at_level_0_sample_the_policy_rate_and_an_auditor_recomputes_it(make_gateway, demo):
    n, rate = 5000, 0.02
    async with make_gateway() as gw:
        limit = asyncio.Semaphore(32)

        async def one(i: int):
            async with limit:
                r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": f"s-{i}"}},
                                         headers={**auth("client"), "x-request-id": f"sample-test-{i}"})
                assert r.status_code == 200 and r.headers["x-oversight-route"] == "auto"  # never told
                return r.headers["x-request-id"]

        await asyncio.gather(*(one(i) for i in range(n)))

        async def queued():
            tickets = (await gw.client.get("/review/tickets", params={"kind": "sample", "limit": 500},
                                           headers=auth("reviewer"))).json()["tickets"]
            await asyncio.sleep(0.2)
            again = (await gw.client.get("/review/tickets", params={"kind": "sample", "limit": 500},
                                         headers=auth("reviewer"))).json()["tickets"]
            return tickets if len(again) == len(tickets) > 0 else None

        sampled = {t["request_id"] for t in await eventually(queued, timeout=10)}
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(len(sampled) - n * rate) <= 4 * sigma, len(sampled)
        key = gw.gateway.sampling_key  # an auditor gets it from the evidence export
        for request_id in list(sampled)[:50]:
            (record,) = await _records(gw, request_id)  # at level 0 only the sampled are recorded
            assert record["route"] == "sampled" and is_sampled(bytes.fromhex(record["sample_draw"]), rate, key)
    assert demo.stats()["requests"] == n


async def test_a_reused_request_id_is_sampled_like_any_other(make_gateway, demo):
    """A client that sends the same X-Request-Id again and again is sampled at the policy's rate all the same."""
    n = 400
    async with make_gateway(policy={"defaults": {"sample_rate": {1: 0.15}}}) as gw:
        await gw.client.put("/admin/oversight/global", json={"level": 1, "reason": "watch"}, headers=auth("operator"))
        for i in range(n):
            r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": f"r-{i}"}},
                                     headers={**auth("client"), "x-request-id": "always-the-same-id"})
            assert r.status_code == 200
        records = [rec for rec in await _records(gw, "always-the-same-id") if rec.get("kind") == "decision"]
        assert len(records) == n  # level 1: every decision recorded
        sampled = sum(rec["route"] == "sampled" for rec in records)
        assert abs(sampled - n * 0.15) <= 4 * math.sqrt(n * 0.15 * 0.85), sampled
        key = gw.gateway.sampling_key
        assert all(is_sampled(bytes.fromhex(rec["sample_draw"]), 0.15, key) == (rec["route"] == "sampled")
                   for rec in records)
