"""Record: one exchange as a decision record — who asked which model version what, what it answered, what became of it.

The data plane's recording stage. Secrets never reach a record: the caller appears by
token id, headers the policy lists are redacted, body fields can be removed by JSON
pointer (`redact_body`). Bodies travel beside the record so the log can encrypt them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway.oversight.plan import HELD, HUMAN, SAMPLED, Plan
from gateway.recorder import Recorder
from gateway.redaction import redact_body, redact_headers

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

_ALWAYS_RECORDED = (HELD, HUMAN, SAMPLED)


def decision_record(ex: "Exchange", request_headers: list[tuple[bytes, bytes]], *, policy_version: str,
                    root_digest: str | None, redact: frozenset[bytes], redact_pointers: tuple[str, ...] = (),
                    sample_draw: bytes | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    now = time.time()
    elapsed = perf_counter() - ex.started
    record: dict[str, Any] = {
        "kind": "decision",
        "time": now - elapsed,
        "end": now,
        "request_id": ex.request_id.decode(),
        "caller": ex.caller.id if ex.caller else None,
        "model": ex.model,
        "version": ex.version,
        "root_digest": root_digest,
        "level": ex.level,
        "route": ex.route,
        "policy": policy_version,
        "status": ex.status or ex.response_status,
        "latency_ms": round(elapsed * 1000, 3),
        "upstream_ms": round(ex.upstream_seconds * 1000, 3),
        "request": {"method": ex.method, "path": ex.target.decode("latin-1"), "headers": redact_headers(request_headers, redact)},
        "response": {"status": ex.response_status, "headers": redact_headers(ex.response_headers, redact)},
    }
    if ex.ticket:
        record["ticket"] = ex.ticket
    if sample_draw is not None:
        record["sample_draw"] = sample_draw.hex()  # with the sampling key, an auditor recomputes the sampling
    if ex.attached:
        record["attached"] = True  # a retry that joined its twin's ticket; the model was not asked again
    if ex.confidence is not None:
        record["confidence"] = ex.confidence
    if ex.truncated:
        record["response"]["truncated"] = True
    if ex.decoded_from:
        record["response"]["decoded_from"] = ex.decoded_from  # the body recorded is the content, decoded from this coding
    elif ex.unreadable:
        record["response"]["unreadable"] = ex.unreadable  # recorded as sent
    bodies = {
        "request": redact_body(ex.request_body or b"", redact_pointers),
        "response": redact_body(ex.response_body or b"", redact_pointers),
    }
    return record, bodies


class DecisionRecording:
    """Records an exchange when its plan says so (level >= 1, or sampled) or a human is involved."""

    def __init__(self, recorder: Recorder, *, root_digest: Callable[[str, str], str | None], policy_version: str,
                 redact: frozenset[bytes], redact_pointers: Mapping[str, tuple[str, ...]]) -> None:
        self.recorder = recorder
        self.root_digest = root_digest
        self.policy_version = policy_version
        self.redact = redact
        self.redact_pointers = redact_pointers

    async def record(self, ex: "Exchange", plan: Plan, headers: list[tuple[bytes, bytes]]) -> int | None:
        if not (plan.record or ex.route in _ALWAYS_RECORDED):
            return None
        record, bodies = decision_record(
            ex, headers, policy_version=self.policy_version, root_digest=self.root_digest(ex.model, ex.version),
            redact=self.redact, redact_pointers=self.redact_pointers.get(ex.model, ()), sample_draw=plan.draw,
        )
        return await self.recorder.decision(record, bodies)

    async def durable(self, index: int | None) -> None:
        await self.recorder.durable(index)


class NoRecording:
    """Evidence is off in the config: no record is even built."""

    async def record(self, ex: "Exchange", plan: Plan, headers: list[tuple[bytes, bytes]]) -> int | None:
        return None

    async def durable(self, index: int | None) -> None:
        return None
