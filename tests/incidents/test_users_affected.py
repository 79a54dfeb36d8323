"""Availability by users: more than 5 % of distinct callers got no prediction, counted once each."""

from __future__ import annotations

import pytest

from tests.support import auth, gateway_factory


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


POLICY = {"triggers": {"evaluate_every": "1h"}}


async def _ask(gw, user: str | None, token: str = "client"):
    body = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}
    if user is not None:
        body["user"] = user
    return await gw.client.post("/v1/chat/completions", json=body, headers=auth(token))


@pytest.mark.parametrize("failing, fires", [(3, True), (2, False)])  # of 40 users: 7.5 % fires, exactly 5 % does not
async def test_more_than_five_percent_of_users_without_an_answer(make, demo, failing, fires):
    async with make(policy=POLICY) as gw:
        demo.configure(fail_rate=failing / 40, fail_status=503)
        answers = [await _ask(gw, f"user-{i}") for i in range(40)]  # one request each; the body's `user` names them
        assert sum(r.status_code == 503 for r in answers) == failing
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["users_affected"] if fires else [])
        if fires:
            assert opened[0]["category"] == "availability"
            assert (opened[0]["values"]["users"], opened[0]["values"]["affected"]) == (40, 3)


async def test_a_user_counts_once_however_many_of_its_requests_failed(make, demo):
    async with make(policy=POLICY) as gw:
        for i in range(38):
            await _ask(gw, f"fine-{i}")
        demo.configure(fail_rate=1.0, fail_status=500)
        for _ in range(30):  # 30 failed requests of two users: 2 of 40 users, 5 %
            await _ask(gw, "unlucky-1")
            await _ask(gw, "unlucky-2")
        assert "users_affected" not in [i["trigger"] for i in await gw.gateway.monitor.evaluate()]


async def test_the_same_user_name_under_two_tokens_is_two_users(make, demo):
    async with make(policy=POLICY) as gw:
        await _ask(gw, "alice", "client")
        await _ask(gw, "alice", "client2")
        await _ask(gw, None, "client")  # no `user`: the token itself
        await gw.gateway.monitor.flush()
        counts = await gw.gateway.monitor.counters.users("demo", "v1", 120)
        assert sorted(n[2:] for n in counts if n.startswith("n:")) == ["test-client", "test-client/alice", "test-client2/alice"]


async def test_the_minimum_number_of_users_guards_the_trigger(make, demo):
    async with make(policy=POLICY) as gw:
        demo.configure(fail_rate=0.5, fail_status=500)
        for i in range(19):  # half fail, but 19 < min_users (20)
            await _ask(gw, f"u-{i}")
        assert await gw.gateway.monitor.evaluate() == []



async def test_two_replicas_on_one_redis_count_users_together_and_each_once(make, demo, redis_url):
    async with make(policy=POLICY, store=redis_url) as one, make(policy=POLICY, store=redis_url) as two:
        for i in range(12):  # users 0-11 on one replica, 10-19 on the other: each alone below min_users (20)
            await _ask(one, f"user-{i}")
        demo.configure(fail_rate=1.0, fail_status=500)
        await _ask(two, "user-10")  # users 10 and 11 failed on the second replica only
        await _ask(two, "user-11")
        demo.configure(fail_rate=0.0)
        for i in range(12, 20):
            await _ask(two, f"user-{i}")
        await one.gateway.monitor.flush()
        (incident,) = await two.gateway.monitor.evaluate()  # 20 distinct users in total, 2 affected: 10 %
        assert incident["trigger"] == "users_affected"
        assert (incident["values"]["users"], incident["values"]["affected"]) == (20, 2)
