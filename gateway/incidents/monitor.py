"""Watching live traffic for the seed's incident triggers, and opening incidents when they fire.

The request path hands each finished exchange to `observe` (memory only). Once a second
the counts go to the store; every `triggers.evaluate_every` the windows are read back —
summed over all replicas — and each trigger is checked for each model's active version.
A trigger fires strictly above its threshold and only with enough data in its window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gateway.background import every
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.evidence import EvidenceLog, TailCheck
from gateway.incidents import access, outputs, reach, shifts, signals
from gateway.incidents.counters import MINUTE, TrafficCounters
from gateway.incidents.sink import Detection, IncidentSink, Orders
from gateway.oversight.confidence import resolve_pointer
from gateway.policy import EffectiveModelPolicy, Triggers
from gateway.recorder import Recorder
from gateway.store import Collections, Counters, StaleWrite

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange
    from gateway.review.tickets import Decision, Ticket

log = logging.getLogger("gateway.monitor")

DECISIONS = "decisions"


class MonitorStore(Counters, Collections, Protocol):
    """Counters summed across replicas, who-made-which-request facts, and given feedback."""


class LiveLog(Protocol):
    """The evidence log this replica writes, once it is open (the live check reads it back)."""

    log: EvidenceLog | None


class Monitor:
    def __init__(self, store: MonitorStore, incidents: IncidentSink, recorder: Recorder, *, triggers: Triggers,
                 policies: Mapping[str, EffectiveModelPolicy], active: Mapping[str, str],
                 evidence: LiveLog | None) -> None:
        self.store = store
        self.incidents = incidents
        self.recorder = recorder
        self.counters = TrafficCounters(store)
        self.triggers = triggers
        self.policies = policies
        self.active = active
        self.evidence = evidence
        self._tail_check: TailCheck | None = None
        self._stubs: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # the request path ----------------------------------------------------------------------
    def observe(self, ex: "Exchange") -> None:
        if ex.error_type in ("unauthorized", "forbidden"):
            self.counters.refused(ex.caller.id if ex.caller else ex.client_addr)
            return
        if ex.caller is not None:  # each token against its own normal (suspicious access, extraction)
            self.counters.accessed(ex.caller.id, _target(ex))
        if not ex.version or ex.disconnected:
            return
        body_user = ex.v1.doc.get("user") if ex.v1 is not None and isinstance(ex.v1.doc, dict) else None
        self.counters.served(ex.model, ex.version, reach.user_of(ex.caller.id if ex.caller else None, ex.client_addr, body_user),
                             failed=ex.upstream_error is not None or ex.status >= 500 or ex.status == 0)
        called = ex.upstream_seconds > 0 or ex.upstream_error is not None
        if not called:
            return  # not sent to the model (held at level 4, refused by the integrity gate, ...)
        error = ex.upstream_error is not None or ex.response_status >= 500
        self.counters.answered(ex.model, ex.version, upstream_ms=ex.upstream_seconds * 1000 if ex.upstream_error is None else None,
                               error=error, unreachable=ex.upstream_error == "connect")
        policy = self.policies[ex.model]
        if policy.fairness is None and not policy.feedback_window:
            return
        group = predicted = None
        if policy.fairness is not None and ex.request_body is not None and ex.response_body and ex.response_status < 400:
            group, predicted = _group_and_outcome(policy.fairness, ex.request_body, ex.response_body)
            if group is not None and predicted is not None:
                self.counters.outcome(ex.model, ex.version, group, predicted == policy.fairness.favourable)
        if policy.feedback_window:
            self._stubs[ex.request_id.decode()] = {"caller": ex.caller.id if ex.caller else None, "model": ex.model,
                                                   "version": ex.version, "group": group, "predicted": predicted,
                                                   "at": time.time()}

    def refused(self, source: str) -> None:
        """Refused credentials from outside the data plane (e.g. a console sign-in) count too."""
        self.counters.refused(source)

    # feedback ----------------------------------------------------------------------------
    async def feedback(self, request_id: str, caller: str, *, correct: bool | None, label: Any) -> dict[str, Any]:
        """Ground truth for one earlier answer, from the client that asked."""
        await self._flush_stubs()
        stub = await self.store.recall(DECISIONS, request_id)
        if stub is None or stub["caller"] != caller:
            raise NotFound(f"no request {request_id!r} of {caller} within the feedback window")
        policy = self.policies[stub["model"]]
        favourable = policy.fairness.favourable if policy.fairness else None
        if correct is None:
            if policy.fairness is None or stub["predicted"] is None:
                raise BadRequest(f"model {stub['model']}'s policy names no outcome to compare a label with; send `correct`")
            correct = label == stub["predicted"]
        try:
            await self.store.insert("feedback", request_id, {"id": request_id, "caller": caller, "correct": correct,
                                                                "label": label, "at": time.time()})
        except StaleWrite:
            raise Conflict(f"feedback for {request_id} was already given") from None
        label_favourable = (label == favourable) if label is not None and favourable is not None else (
            (stub["predicted"] == favourable) == correct if stub["predicted"] is not None and favourable is not None else None)
        self.counters.feedback(stub["model"], stub["version"], correct=correct, group=stub["group"],
                               label_favourable=label_favourable,
                               predicted_favourable=None if stub["predicted"] is None else stub["predicted"] == favourable)
        await self.recorder.action("feedback", actor=caller, reason="ground truth", request_id=request_id,
                                      model=stub["model"], version=stub["version"], correct=correct, label=label)
        return {"request_id": request_id, "model": stub["model"], "version": stub["version"], "correct": correct}

    def verdict(self, ticket: "Ticket", decision: "Decision") -> None:
        """A reviewer's verdict is ground truth too: agree/approve right, disagree/override wrong."""
        kind = decision.outcome
        if kind in ("agree", "approve"):
            self.counters.feedback(ticket.model, ticket.version, correct=True)
        elif kind in ("disagree", "override"):
            self.counters.feedback(ticket.model, ticket.version, correct=False)
        if ticket.recommendation is not None or ticket.kind == "appeal":  # a model answer was judged (output quality)
            self.counters.reviewed(ticket.model, ticket.version, wrong=kind in ("disagree", "override", "reject"),
                                   reason=decision.reason)

    async def request_of(self, request_id: str) -> dict[str, Any] | None:
        """Who made a request, on which model and version, while its model's feedback window lasts (reports)."""
        await self._flush_stubs()
        return await self.store.recall(DECISIONS, request_id)

    # running -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(every(1.0, self.flush, "flushing traffic counts", log), name="gateway-monitor-flush"),
            asyncio.create_task(every(self.triggers.evaluate_every, self.evaluate, "evaluating triggers", log),
                                name="gateway-monitor-evaluate"),
        ]
        if self.evidence is not None and self.evidence.log is not None:
            self._tail_check = TailCheck(self.evidence.log)
            self._tasks.append(asyncio.create_task(
                every(self.triggers.evidence.check_every, self.check_evidence, "checking the evidence log", log),
                name="gateway-evidence-check"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            await self.flush()
        except Exception:
            log.warning("could not flush the last counts at shutdown")

    async def flush(self) -> None:
        await self.counters.flush()
        await self._flush_stubs()

    async def _flush_stubs(self) -> None:
        if self._stubs:
            stubs, self._stubs = self._stubs, {}
            windows = [self.policies[s["model"]].feedback_window or 0 for s in stubs.values()]
            await self.store.remember(DECISIONS, stubs, ttl=max(windows))

    async def check_evidence(self) -> dict[str, Any] | None:
        problem = await asyncio.to_thread(self._tail_check.run) if self._tail_check else None
        if problem is None:
            return None
        t = self.triggers.evidence
        return (await self.incidents.raise_incident(Detection(
            category="security", trigger="evidence", severity=t.severity,
            summary=f"the evidence log failed its live check: {problem}", values={"problem": problem},
            orders=Orders(t.raise_to)))).to_doc()

    # evaluating ----------------------------------------------------------------------------
    async def evaluate(self) -> list[dict[str, Any]]:
        """Check every trigger now; returns the incidents opened or added to."""
        await self.flush()
        fired: list[dict[str, Any]] = []
        for model in self.policies:
            version = self.active.get(model)
            if version is None:
                continue
            for check in (self._error_rate, self._latency, self._downtime, self._accuracy, self._fairness):
                finding = await check(model, version)
                if finding is not None:
                    fired.append(await self._open(model, version, *finding))
            for finding in await self._kept_apart(model, version):
                fired.append(await self._open(model, version, *finding))
        for finding in (await self._auth_failures(), await access.suspicious_access(self.counters, self.triggers.suspicious_access)):
            if finding is not None:
                fired.append(await self._open(None, None, *finding))
        return fired

    async def _kept_apart(self, model: str, version: str) -> list[tuple]:
        """What the triggers in their own modules found: output quality, users affected, sudden shifts."""
        c, t = self.counters, self.triggers
        found = [await outputs.reviewed(c, t.output_quality, model, version),
                 await outputs.checked(c, t.output_check, model, version),
                 await outputs.reports(c, t.user_reports, model, version),
                 await reach.users_affected(c, t.users_affected, model, version)]
        if self.policies[model].fairness is not None:  # groups are known only where the policy names them
            found += [await shifts.group_shift(c, t.group_shift, model, version),
                      await shifts.accuracy_gap_shift(c, t.accuracy_gap_shift, model, version)]
        return [f for f in found if f is not None]

    async def _open(self, model, version, trigger_name: str, category: str, summary: str, values: dict[str, Any],
                    window: float) -> dict[str, Any]:
        trigger = getattr(self.triggers, trigger_name)
        now = time.time()
        incident = await self.incidents.raise_incident(Detection(
            category=category, trigger=trigger_name, severity=trigger.severity, summary=summary, model=model,
            version=version, values=values, since=now - window, until=now, orders=Orders(trigger.raise_to, trigger.rollback)))
        return incident.to_doc()

    async def _error_rate(self, model: str, version: str):
        t = self.triggers.error_rate
        counts = await self.counters.traffic(model, version, t.window)
        rate = signals.error_rate(counts, min_requests=t.min_requests)
        if rate is None or rate <= t.threshold:
            return None
        return ("error_rate", "performance",
                f"{model} {version}: {rate:.2%} of requests failed over {t.window / 60:g} min (threshold {t.threshold:.2%})",
                {"error_rate": rate, "requests": counts.get("requests", 0), "errors": counts.get("errors", 0)}, t.window)

    async def _latency(self, model: str, version: str):
        t = self.triggers.latency
        current = signals.p50_ms(await self.counters.traffic(model, version, t.window), min_count=t.min_requests)
        if current is None:
            return None
        baseline = self.policies[model].latency_baseline_ms
        if baseline is None:  # learned: the hour before the window
            earlier = await self.counters.traffic(model, version, t.baseline_window, end=time.time() - t.window)
            baseline = signals.p50_ms(earlier, min_count=t.min_requests)
        if baseline is None or current <= t.factor * baseline:
            return None
        return ("latency", "performance",
                f"{model} {version}: p50 latency {current:.0f} ms is over {t.factor:g}x its normal {baseline:.0f} ms",
                {"p50_ms": current, "baseline_ms": baseline, "factor": current / baseline}, t.window)

    async def _downtime(self, model: str, version: str):
        t = self.triggers.downtime
        minutes = await self.counters.recent_minutes(model, version, int(t.after // MINUTE) + 2)
        down = 0
        for bucket in minutes:
            if bucket.get("unreachable", 0) > 0 and bucket.get("reached", 0) == 0:
                down += 1
            elif bucket:
                break
        if down * MINUTE <= t.after:
            return None
        return ("downtime", "availability", f"{model} {version}: the upstream has been unreachable for {down} min",
                {"minutes_unreachable": down}, down * MINUTE)

    async def _accuracy(self, model: str, version: str):
        policy = self.policies[model]
        for name in ("accuracy_drop_cumulative", "accuracy_drop"):
            t = getattr(self.triggers, name)
            current = signals.accuracy(await self.counters.quality(model, version, t.window), min_samples=t.min_samples)
            if current is None:
                continue
            floor = policy.published_min_accuracy
            if name == "accuracy_drop_cumulative" and floor is not None and current < floor:
                return (name, "performance", f"{model} {version}: accuracy {current:.1%} is below its published minimum {floor:.1%}",
                        {"accuracy": current, "published_minimum": floor}, t.window)
            baseline = policy.baseline_accuracy
            if baseline is None:  # learned: the week before the window
                earlier = await self.counters.quality(model, version, 7 * 86400, end=time.time() - t.window)
                baseline = signals.accuracy(earlier, min_samples=t.min_samples)
            if baseline is None:
                continue
            drop = signals.drop_pct(current, baseline)
            if drop > t.threshold_pct:
                return (name, "performance",
                        f"{model} {version}: accuracy {current:.1%} is {drop:.1f}% below its baseline {baseline:.1%} "
                        f"over {t.window / 3600:g} h", {"accuracy": current, "baseline": baseline, "drop_pct": drop}, t.window)
        return None

    async def _fairness(self, model: str, version: str):
        if self.policies[model].fairness is None:
            return None
        di, gap = self.triggers.disparate_impact, self.triggers.fnr_gap
        counts = await self.counters.quality(model, version, di.window)
        found = signals.disparate_impact(counts, min_per_group=di.min_per_group, confidence=di.confidence)
        if found is not None and found.ratio_upper < di.threshold:
            return ("disparate_impact", "bias",
                    f"{model} {version}: disparate impact ratio {found.ratio:.2f} (upper {di.confidence:.0%} bound "
                    f"{found.ratio_upper:.2f}) is below {di.threshold:.2f}: group {found.lowest} is selected at "
                    f"{found.rates[found.lowest]:.1%}, group {found.highest} at {found.rates[found.highest]:.1%}",
                    {"ratio": found.ratio, "ratio_upper": found.ratio_upper, "rates": found.rates, "decisions": sum(found.counts.values())},
                    di.window)
        counts = counts if gap.window == di.window else await self.counters.quality(model, version, gap.window)
        found_gap = signals.fnr_gap(counts, min_per_group=gap.min_per_group)
        if found_gap is not None and found_gap[0] > gap.threshold:
            return ("fnr_gap", "bias", f"{model} {version}: false negative rates differ by {found_gap[0] * 100:.1f} points "
                                       f"between groups", {"gap": found_gap[0], "fnr": found_gap[1]}, gap.window)
        return None

    async def _auth_failures(self):
        t = self.triggers.auth_failures
        by_source = await self.counters.refusals(t.window)
        if not by_source:
            return None
        source, count = max(by_source.items(), key=lambda item: item[1])
        if count <= t.threshold:
            return None
        return ("auth_failures", "security", f"{int(count)} refused credentials from {source} within {t.window:g} s",
                {"source": source, "refusals": count}, t.window)


def _target(ex: "Exchange") -> str:
    """What a request asked for, for a token's breadth: method, model and path (no query)."""
    path = ex.target.split(b"?", 1)[0][:200].decode("latin-1")
    return f"{ex.method} {ex.model or '-'} {path}"


def _group_and_outcome(fairness, request_body: bytes, response_body: bytes) -> tuple[str | None, Any]:
    try:
        group = resolve_pointer(json.loads(request_body), fairness.group_pointer)
        outcome = resolve_pointer(json.loads(response_body), fairness.outcome_pointer)
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None
    return (str(group) if group is not None else None), outcome
