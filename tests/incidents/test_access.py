"""Suspicious access and extraction: one token far beyond its own baseline, in volume or in breadth."""

from __future__ import annotations

import time

import pytest

from gateway.incidents.counters import HOUR
from tests.support import auth, gateway_factory


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


# 10-minute window, a day's baseline: 720 requests a day are 5 per window; 10x that is 50
POLICY = {"triggers": {"evaluate_every": "1h", "suspicious_access": {"min_requests": 20, "min_targets": 5}}}
TOKEN = "test-client"


async def _baseline(gw, requests: int, targets: list[str]) -> None:
    """What the hourly counters hold for a token that made `requests` requests to `targets` three hours ago."""
    hour = int(time.time() // HOUR) * HOUR - 3 * HOUR
    fields = {f"n:{TOKEN}": requests, **{f"t:{TOKEN}:{t}": 1 for t in targets}}
    await gw.gateway.store.add_counts({f"kh|{hour}": fields}, ttl=6 * HOUR)


async def _predict(gw, path: str = "predict", token: str = "client"):
    return await gw.client.post(f"/models/demo/{path}", json={"applicant": {"id": "x"}}, headers=auth(token))


@pytest.mark.parametrize("requests, fires", [(51, True), (50, False)])
async def test_volume_over_ten_times_the_tokens_own_normal(make, requests, fires):
    async with make(policy=POLICY) as gw:
        await _baseline(gw, 720, ["POST demo /models/demo/predict"])
        for _ in range(requests):
            await _predict(gw)
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["suspicious_access"] if fires else [])
        if fires:
            values = opened[0]["values"]
            assert (values["token"], values["measure"], values["value"]) == (TOKEN, "volume", 51)
            assert values["baseline"] == pytest.approx(5.0) and opened[0]["category"] == "security"


async def test_a_new_token_is_not_suspect_below_the_minimum(make):
    async with make(policy=POLICY) as gw:  # no baseline at all: only min_requests (20) stands in the way
        for _ in range(20):
            await _predict(gw)
        assert await gw.gateway.monitor.evaluate() == []
        await _predict(gw)
        assert [i["trigger"] for i in await gw.gateway.monitor.evaluate()] == ["suspicious_access"]


@pytest.mark.parametrize("targets, fires", [(11, True), (10, False)])
async def test_breadth_over_ten_times_the_tokens_own_normal(make, targets, fires):
    async with make(policy=POLICY) as gw:
        await _baseline(gw, 720, ["POST demo /models/demo/predict"])  # one target normally: 10x is 10
        for i in range(targets):  # few requests (volume is normal), but each to another endpoint
            await _predict(gw, f"endpoint-{i}")
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["suspicious_access"] if fires else [])
        if fires:
            assert (opened[0]["values"]["measure"], opened[0]["values"]["value"]) == ("breadth", 11)


async def test_each_token_is_measured_against_its_own_baseline(make):
    async with make(policy=POLICY) as gw:
        await _baseline(gw, 720 * 4, ["POST demo /models/demo/predict"])  # test-client is normally busy: 200 per window
        for _ in range(30):
            await _predict(gw, token="client")   # busy token, normal for it
        assert await gw.gateway.monitor.evaluate() == []
        for _ in range(30):
            await _predict(gw, token="client2")  # the same volume from a token with no such history
        (incident,) = await gw.gateway.monitor.evaluate()
        assert incident["values"]["token"] == "test-client2"
