"""What the effective level means for one request: call the model or not, hold or release, sample, record.

`Planner` is the request path's oversight stage: given the model and its effective
level, it answers with a `Plan`, from the policy, the deployment's sampling key and a
fresh random draw alone (memory only, no store round trip; see `sampling`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.control import keys
from gateway.oversight.sampling import Sampler, draw
from gateway.policy import EffectiveModelPolicy

AUTO, SAMPLED, HELD, HUMAN = "auto", "sampled", "held", "human"


@dataclass(frozen=True, slots=True)
class Plan:
    level: int
    call_model: bool  # False at level 4: every request is a human task
    hold_all: bool  # level 3: every answer waits for a human
    threshold: float | None  # level 2: answers below it (or without a confidence) wait for a human
    sampled: bool  # queued for post-hoc review after it is served
    record: bool  # recorded as evidence whatever happens
    watched: bool = False  # the model's bodies feed bias and accuracy monitoring, and its output check
    draw: bytes | None = None  # the random draw sampling used (recorded, for auditors)

    @property
    def buffers(self) -> bool:
        """The answer is read whole before anything reaches the client."""
        return self.hold_all or self.threshold is not None

    @property
    def captures(self) -> bool:
        """The request and answer bytes are kept (for a ticket or a record)."""
        return self.record or self.sampled or self.buffers or not self.call_model or self.watched


def plan_request(level: int, policy: EffectiveModelPolicy, record_from: int, sampler: Sampler) -> Plan:
    watched = policy.fairness is not None or bool(policy.feedback_window) or policy.output_check is not None
    if level >= 4:
        return Plan(level, False, False, None, False, True, watched)
    if level == 3:
        return Plan(level, True, True, None, False, True, watched)
    rate = policy.rate_at(level)
    drawn = draw() if 0.0 < rate < 1.0 else None
    sampled = sampler.sampled(drawn, rate) if drawn is not None else rate >= 1.0
    threshold = policy.confidence_threshold if level == 2 else None
    return Plan(level, True, False, threshold, sampled, level >= record_from or sampled, watched, drawn)


class Planner:
    """Plans requests with each model's effective policy and the deployment's sampling key."""

    def __init__(self, policies: Mapping[str, EffectiveModelPolicy], *, record_from: int) -> None:
        self.policies = policies
        self.record_from = record_from
        self.sampling_key = b""
        self._sampler = Sampler(b"")

    def use_sampling_key(self, key: bytes) -> None:
        self.sampling_key = key
        self._sampler = Sampler(key)

    def on_state_change(self, key: keys.Key, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """The deployment's sampling key lives in the control state, the same on every replica."""
        if isinstance(key, keys.Sampling):
            self.use_sampling_key(bytes.fromhex(new["key"]))

    def plan(self, model: str, level: int) -> Plan:
        return plan_request(level, self.policies[model], self.record_from, self._sampler)
