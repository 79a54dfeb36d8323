"""A Redis master killed under load, with gateway replicas on Sentinel: what held, measured from outside.

Used by `tests/fleet/test_sentinel_failover.py` (one short run) and `scripts/bench_failover.py`
(repeated runs at 200 req/s). Everything is a real process: redis-server master, replicas
and sentinels, the demo model, and gateway replicas at level 3 (every answer held). Load
goes to the replicas in turn at a fixed rate; a watcher samples each replica's `/readyz`
and the demo model's request count every 20 ms.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.redis_topologies import SentinelSet
from tests.support import GatewayProcess, auth, free_port, start_demo, write_config


@dataclass
class Answer:
    sent: float
    replica: int
    status: int
    ticket: str | None
    error: str | None
    message: str = ""
    level: str | None = None
    done: float = 0.0
    request_id: str = ""


@dataclass
class Outcome:
    answers: list[Answer] = field(default_factory=list)
    samples: list[tuple[float, list[bool], int]] = field(default_factory=list)  # (time, stale per replica, model calls)
    killed_at: float = 0.0
    failover_at: float = 0.0
    unknown_tickets: list[str] = field(default_factory=list)
    undecidable: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # each replica's log, for what went wrong

    def recovered_at(self) -> float | None:
        """When each replica was answering 202 again for good: the first request after its last refusal."""
        if not self.killed_at:
            return None
        times = []
        for replica in {a.replica for a in self.answers}:
            mine = sorted((a for a in self.answers if a.replica == replica), key=lambda a: a.sent)
            failed = [i for i, a in enumerate(mine) if a.status != 202]
            if not failed:
                continue
            if failed[-1] + 1 >= len(mine):
                return None  # still refusing at the end
            times.append(mine[failed[-1] + 1].sent)
        return max(times) if times else None

    def model_calls_while_unknown(self) -> int:
        """Requests that reached the model while every replica's state was unknown (its readyz said stale).

        Counted between consecutive samples that both found every replica stale, so a request
        sent before the state was lost, or after a replica confirmed it again, is not counted.
        """
        calls = 0
        for (_, flags, before), (_, later_flags, after) in zip(self.samples, self.samples[1:]):
            if all(flags) and all(later_flags):
                calls += after - before
        return calls

    def summary(self) -> dict[str, Any]:
        statuses: dict[int, int] = {}
        for a in self.answers:
            statuses[a.status] = statuses.get(a.status, 0) + 1
        recovered = self.recovered_at()
        errors = sorted({a.error for a in self.answers if a.error})
        return {"requests": len(self.answers), "statuses": statuses, "errors": errors,
                "failover_s": round(self.failover_at - self.killed_at, 2),
                "recovered_s": round(recovered - self.killed_at, 2) if recovered else None,
                "model_calls_while_unknown": self.model_calls_while_unknown(),
                "tickets": sum(1 for a in self.answers if a.ticket), "tickets_lost": len(self.unknown_tickets),
                "tickets_undecidable": len(self.undecidable)}


def run(directory: Path, *, rate: float, before: float, after: float, replicas: int = 2,
        max_staleness: str = "1s") -> Outcome:
    """Start everything, send `rate` req/s, kill the master after `before` s, go on `after` s past recovery."""
    topology = SentinelSet(directory / "redis", replicas=2, down_after_ms=1000).start()
    demo = start_demo()
    config = write_config(directory / "gw", {"demo": {"v1": demo.url}}, store=topology.url,
                          policy={"oversight": {"initial_level": 3, "max_staleness": max_staleness}})
    gateways = [GatewayProcess(config, free_port()) for _ in range(replicas)]
    outcome = Outcome()
    try:
        for gateway in gateways:
            gateway.start()
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(gateways, demo.url, stop, outcome), daemon=True)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            futures = []
            started = time.monotonic()
            i = 0
            while True:
                now = time.monotonic()
                if not outcome.killed_at and now - started >= before:
                    outcome.killed_at = now
                    old = topology.kill_master()
                    threading.Thread(target=_note_failover, args=(topology, old, outcome), daemon=True).start()
                recovered = outcome.recovered_at() if outcome.killed_at else None
                if recovered and now - recovered >= after:
                    break
                if outcome.killed_at and now - outcome.killed_at > 60:
                    break  # never recovered: the caller's assertions say so
                due = started + i / rate
                if due > now:
                    time.sleep(due - now)
                futures.append(pool.submit(_one, gateways[i % len(gateways)], i % len(gateways), i))
                i += 1
                if i % 50 == 0:
                    outcome.answers = [f.result() for f in futures if f.done()]
            outcome.answers = [f.result() for f in futures]
        stop.set()
        watcher.join(5)
        _check_tickets(gateways[0], outcome)
    finally:
        for gateway in gateways:
            gateway.stop()
            outcome.logs.append(gateway.log())
        demo.stop()
        topology.stop()
    return outcome


def _one(gateway: GatewayProcess, replica: int, i: int) -> Answer:
    sent = time.monotonic()
    try:
        r = httpx.post(f"{gateway.url}/models/demo/predict", json={"applicant": {"id": f"f-{i}"}},
                       headers=auth("client"), timeout=15)
    except httpx.HTTPError as exc:
        return Answer(sent, replica, 0, None, f"transport: {exc.__class__.__name__}", done=time.monotonic())
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return Answer(sent, replica, r.status_code, body.get("ticket") if r.status_code == 202 else None, error.get("type"),
                  error.get("message", ""), r.headers.get("x-oversight-level"), time.monotonic(),
                  r.headers.get("x-request-id", ""))


def _note_failover(topology: SentinelSet, old: int, outcome: Outcome) -> None:
    topology.wait_failover(old)
    outcome.failover_at = time.monotonic()


def _watch(gateways: list[GatewayProcess], demo_url: str, stop: threading.Event, outcome: Outcome) -> None:
    with httpx.Client(timeout=2) as client:
        while not stop.is_set():
            try:
                flags = [client.get(f"{g.url}/readyz").json()["checks"]["store"] == "stale" for g in gateways]
                calls = client.get(f"{demo_url}/_demo/stats").json()["by_path"].get("/predict", 0)
                outcome.samples.append((time.monotonic(), flags, calls))
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.02)


def _check_tickets(gateway: GatewayProcess, outcome: Outcome) -> None:
    """Every ticket that got a 202 is still there, pending, and can be decided."""
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for answer in outcome.answers:
            if not answer.ticket:
                continue
            seen = client.get(f"/review/tickets/{answer.ticket}", headers=auth("reviewer"))
            if seen.status_code != 200:
                outcome.unknown_tickets.append(answer.ticket)
                continue
            decision = {"action": "override", "response": {"decision": "approve"}, "note": "after the failover"}
            decided = client.post(f"/review/tickets/{answer.ticket}/decision", json=decision, headers=auth("reviewer"))
            if decided.status_code != 200:
                outcome.undecidable.append(answer.ticket)
