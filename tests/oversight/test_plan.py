"""The oversight plan: what each level does to one request, from the policy and the sampling key alone."""

from __future__ import annotations

import pytest

from gateway.control import keys
from gateway.oversight.plan import Planner
from gateway.oversight.sampling import is_sampled
from gateway.policy import load_policy
from tests.support import DEFAULT_POLICY


@pytest.fixture
def planner():
    policy = load_policy(DEFAULT_POLICY)
    planner = Planner({"demo": policy.for_model("demo")}, record_from=policy.oversight.record_all_from_level)
    planner.use_sampling_key(bytes(16))
    return planner


def test_level_four_never_calls_the_model_and_records_everything(planner):
    plan = planner.plan("demo", 4)
    assert (plan.call_model, plan.record, plan.captures, plan.sampled) == (False, True, True, False)


def test_level_three_holds_every_answer(planner):
    plan = planner.plan("demo", 3)
    assert (plan.call_model, plan.hold_all, plan.buffers, plan.record) == (True, True, True, True)


def test_level_two_holds_below_the_policy_threshold(planner):
    plan = planner.plan("demo", 2)
    assert (plan.hold_all, plan.threshold, plan.buffers) == (False, 0.80, True)


def test_level_one_records_every_decision_and_level_zero_only_samples(planner):
    assert planner.plan("demo", 1).record
    plans = [planner.plan("demo", 0) for _ in range(1000)]
    assert all(p.record == p.sampled and not p.buffers for p in plans)
    assert all(p.draw is not None for p in plans)  # each its own draw, recorded for auditors


def test_about_the_policy_rate_is_sampled_at_level_zero(planner):
    sampled = sum(planner.plan("demo", 0).sampled for _ in range(20_000))
    assert 300 <= sampled <= 500  # 2 % of 20,000, within 4.5 sigma


def test_the_sampling_key_comes_from_the_control_state(planner):
    planner.on_state_change(keys.Sampling(), None, {"key": "ff" * 16})
    assert planner.sampling_key == b"\xff" * 16
    plan = next(p for p in (planner.plan("demo", 0) for _ in range(10_000)) if p.sampled)
    assert is_sampled(plan.draw, 0.02, b"\xff" * 16)  # the key in the state decided it
    assert all(p.sampled == is_sampled(p.draw, 0.02, b"\xff" * 16) for p in (planner.plan("demo", 0) for _ in range(2000)))
    planner.on_state_change(keys.Level(None), None, {"level": 4})  # other documents leave it alone
    assert planner.sampling_key == b"\xff" * 16
