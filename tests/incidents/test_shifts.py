"""Sudden shifts: a group's selection rate, and the accuracy gap between groups, against the model's previous window."""

from __future__ import annotations

import math
import time

import pytest
from scipy.stats import norm

from gateway.incidents.counters import HOUR
from tests.incidents.test_triggers import FAIRNESS, _send, applicants
from tests.support import auth, gateway_factory

Z = norm.ppf(0.975)


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


def _policy(**demo_policy) -> dict:
    return {"triggers": {"evaluate_every": "1h"}, "models": {"demo": {"fairness": FAIRNESS, **demo_policy}}}


async def _previous_window(gw, fields: dict[str, float]) -> None:
    """What the quality counters hold from a day and a half ago: inside the previous 24 h window, not the current."""
    hour = int(time.time() // HOUR) * HOUR - 36 * HOUR
    await gw.gateway.store.add_counts({f"q|demo|v1|{hour}": fields}, ttl=3 * 24 * HOUR)


# by hand: Newcombe's interval for a difference of proportions (from Wilson's score intervals)
def _wilson(x, n):
    p = x / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def _newcombe_lower(x_now, n_now, x_before, n_before):
    p1, p2 = x_now / n_now, x_before / n_before
    l1, _ = _wilson(x_now, n_now)
    _, u2 = _wilson(x_before, n_before)
    return p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)


def _shift_boundary() -> int:
    """The most approvals out of 100 now (50 of 100 before) whose rise is not surely over 10 points."""
    return max(x for x in range(50, 100) if _newcombe_lower(x, 100, 50, 100) <= 0.10)


@pytest.mark.parametrize("just", ["above", "below"])
async def test_a_groups_selection_rate_shifting_more_than_ten_points(make, just):
    approved = _shift_boundary() + (1 if just == "above" else 0)
    async with make(policy=_policy()) as gw:
        await _previous_window(gw, {"grp:A:n": 100, "grp:A:hit": 50})
        await _send(gw, applicants("approve", approved, "sa") + applicants("deny", 100 - approved, "sd"), group="A")
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["group_shift"] if just == "above" else [])
        if just == "above":
            values = opened[0]["values"]
            assert (values["group"], values["before"], values["now"]) == ("A", 0.5, approved / 100)
            assert values["certain"] > 0.10 and opened[0]["category"] == "bias"


async def test_a_small_group_in_either_window_cannot_shift(make):
    async with make(policy=_policy()) as gw:
        await _previous_window(gw, {"grp:A:n": 29, "grp:A:hit": 0})  # 29 < min_per_group (30)
        await _send(gw, applicants("approve", 100, "ss"), group="A")  # 0 % -> 100 %
        assert await gw.gateway.monitor.evaluate() == []


# by hand: Wald's interval for how much a gap between two groups widened (four proportions)
def _widening_lower(y_now_b):
    now_a, now_b, before_a, before_b = 0.9, y_now_b / 100, 0.9, 0.9
    widening = (now_a - now_b) - (before_a - before_b)
    variance = sum(p * (1 - p) / 100 for p in (now_a, now_b, before_a, before_b))
    return widening - Z * math.sqrt(variance)


def _gap_boundary() -> int:
    """The fewest right answers out of 100 for group B now whose widened gap is not surely over 5 points."""
    return min(y for y in range(0, 90) if _widening_lower(y) <= 0.05)


@pytest.mark.parametrize("just", ["above", "below"])
async def test_the_accuracy_gap_between_groups_widening_suddenly(make, just):
    right_b = _gap_boundary() - (1 if just == "above" else 0)
    async with make(policy=_policy(feedback_window="1h")) as gw:
        await _previous_window(gw, {"acc:A:n": 100, "acc:A:hit": 90, "acc:B:n": 100, "acc:B:hit": 90})
        for group, right in (("A", 90), ("B", right_b)):
            answers = await _send(gw, [f"g{group}-{i}" for i in range(100)], group=group)
            for n, r in enumerate(answers):
                fb = await gw.client.post("/v1/feedback", json={"request_id": r.headers["x-request-id"], "correct": n < right},
                                          headers=auth("client"))
                assert fb.status_code == 201, fb.text
        opened = {i["trigger"]: i for i in await gw.gateway.monitor.evaluate()}
        assert ("accuracy_gap_shift" in opened) == (just == "above")
        if just == "above":
            values = opened["accuracy_gap_shift"]["values"]
            assert values["groups"] == ["B", "A"] and values["before"] == 0.0
            assert values["now"] == pytest.approx(0.9 - right_b / 100)
