"""The decisions of an incident's window, read back from the evidence logs of every replica.

Retro-reviews, the affected-individuals report, the post-rollback watch and the
verification's per-replica figures all start from the same thing: the decision records
whose request started in the window, with the group, the outcome and the subject the
model's policy points to (`fairness.group_pointer`, `fairness.outcome_pointer`,
`subject_pointer`). Reading the logs is blocking file work: call `read` from a thread.

What the logs hold depends on the level: at level 1 and above every decision is recorded;
at level 0 only the sampled (and held) ones. The figures say how many decisions they rest on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.oversight.confidence import resolve_pointer
from gateway.policy import EffectiveModelPolicy

log = logging.getLogger("gateway.incidents")


class Log(Protocol):
    origin: str

    def select(self, since: float | None = None, until: float | None = None, model: str | None = None) -> Iterable[int]: ...

    def get(self, idx: int) -> dict: ...


class Logs(Protocol):
    """This replica's log and the others' (`gateway.recording.fleet.FleetLogs`)."""

    @property
    def own(self) -> Log: ...

    def others(self) -> list: ...


@dataclass(frozen=True, slots=True)
class Decided:
    request_id: str
    time: float
    model: str
    version: str
    replica: str  # the log's origin
    route: str
    status: int | None
    latency_ms: float | None
    ticket: str | None
    caller: str | None
    group: str | None
    outcome: Any
    favourable: bool | None
    subject: str | None
    request_body: bytes
    response_body: bytes
    response_status: int | None
    request: dict[str, Any]  # method, path, headers (already redacted)


class WindowDecisions:
    def __init__(self, logs: Logs | None, policies: Mapping[str, EffectiveModelPolicy]) -> None:
        self.logs = logs
        self.policies = policies

    def read(self, since: float, until: float | None, model: str | None, *, limit: int = 100_000,
             own_only: bool = False) -> list[Decided]:
        """The window's decision records, oldest first (blocking)."""
        if self.logs is None:
            return []
        sources: list[Any] = [self.logs.own] if own_only else [self.logs.own, *self.logs.others()]
        found: list[Decided] = []
        for source in sources:
            try:
                indexes = list(source.select(since, until, model))
            except Exception as exc:  # a damaged or vanished log: the others still count
                log.warning("cannot read the window from evidence log %s: %s", getattr(source, "origin", "?"), exc)
                continue
            for idx in indexes:
                try:
                    record = source.get(idx)
                except (KeyError, IndexError, ValueError, OSError):
                    continue
                if record.get("kind") == "decision":
                    found.append(self._decided(record, source.origin))
                if len(found) >= limit:
                    break
        return sorted(found, key=lambda d: d.time)[:limit]

    def _decided(self, record: dict[str, Any], origin: str) -> Decided:
        bodies = record.get("bodies") or {}
        request_body = bodies.get("request") if isinstance(bodies.get("request"), bytes) else b""
        response_body = bodies.get("response") if isinstance(bodies.get("response"), bytes) else b""
        policy = self.policies.get(record.get("model", ""))
        group = outcome = subject = favourable = None
        if policy is not None:
            request_doc, response_doc = _json(request_body), _json(response_body)
            if policy.fairness is not None:
                group = _pointed(request_doc, policy.fairness.group_pointer)
                outcome = _pointed(response_doc, policy.fairness.outcome_pointer)
                if outcome is not None:
                    favourable = outcome == policy.fairness.favourable
            if policy.subject_pointer:
                subject = _pointed(request_doc, policy.subject_pointer)
        response = record.get("response") or {}
        return Decided(
            str(record.get("request_id")), float(record.get("time") or 0), str(record.get("model")),
            str(record.get("version")), origin, str(record.get("route")), record.get("status"), record.get("latency_ms"),
            record.get("ticket"), record.get("caller"), None if group is None else str(group), outcome, favourable,
            None if subject is None else str(subject), request_body, response_body, response.get("status"),
            record.get("request") or {},
        )


def figures(decisions: list[Decided]) -> dict[str, Any]:
    """Error rate, latency and each group's selection rate over some decisions (the fairness ratio among them)."""
    answered = [d for d in decisions if d.status is not None]
    errors = sum(1 for d in answered if d.status >= 500)
    latencies = sorted(d.latency_ms for d in decisions if d.latency_ms is not None)
    groups: dict[str, dict[str, float]] = {}
    for d in decisions:
        if d.group is None or d.favourable is None:
            continue
        g = groups.setdefault(d.group, {"n": 0, "favourable": 0})
        g["n"] += 1
        g["favourable"] += 1 if d.favourable else 0
    for g in groups.values():
        g["rate"] = round(g["favourable"] / g["n"], 4)
    rates = [g["rate"] for g in groups.values()]
    return {
        "decisions": len(decisions),
        "error_rate": round(errors / len(answered), 4) if answered else None,
        "latency_p50_ms": _pct(latencies, 50), "latency_p95_ms": _pct(latencies, 95),
        "groups": groups,
        "disparate_impact": round(min(rates) / max(rates), 4) if len(rates) >= 2 and max(rates) > 0 else None,
    }


def accuracy(tickets: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Reviewers' judgements as ground truth: agree and approve are right; disagree and override are wrong."""
    right = wrong = 0
    for ticket in tickets:
        decision = ticket.get("decision") or {}
        outcome = decision.get("verdict") or decision.get("action")
        if outcome in ("agree", "approve"):
            right += 1
        elif outcome in ("disagree", "override"):
            wrong += 1
    judged = right + wrong
    return {"judged": judged, "accuracy": round(right / judged, 4) if judged else None}


def _pct(ordered: list[float], p: int) -> float | None:
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))
    return round(ordered[int(rank) - 1], 3)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _pointed(doc: Any, pointer: str) -> Any:
    if doc is None:
        return None
    try:
        value = resolve_pointer(doc, pointer)
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return value if isinstance(value, (str, int, float, bool)) else None
