"""A Redis master killed under load, with gateway replicas on Sentinel: what held, measured from outside.

Used by `tests/fleet/test_sentinel_failover.py` (one short run) and `scripts/bench_failover.py`
(repeated runs at 200 req/s). Everything is a real process: redis-server master, replicas
and sentinels, a model, and gateway replicas at level 3 (every answer held). Nothing is
taken from the gateways' own account of what they did:
- load goes to the replicas in turn at a fixed rate (open loop: a slow answer does not
  delay the next request), one connection per request;
- the model notes when each request reached it and whose it was
  (`tests/fleet/recording_model.py`), so a request is known to have reached it;
- each replica's `/readyz` is sampled every 20 ms: when it said "stale", that replica
  did not know its control state;
- the sentinels' own events say when the master was declared down and when the
  promoted one was announced (`+switch-master`);
- afterwards every ticket that got a 202 is read back and decided.

All times are `time.monotonic()` (CLOCK_MONOTONIC, shared by every process here).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.redis_topologies import SentinelSet
from tests.support import ROOT, TOKENS, GatewayProcess, dies_with_tests, free_port, write_config

SENTINEL_EVENTS = ("+sdown", "+odown", "+try-failover", "+elected-leader", "+promoted-slave", "+switch-master",
                   "-odown", "+failover-end")


@dataclass
class Answer:
    index: int
    replica: int
    sent: float
    done: float = 0.0
    status: int = 0  # 0: no HTTP answer (the error says why)
    level: str = ""
    route: str = ""
    ticket: str | None = None
    error: str | None = None
    message: str = ""
    request_id: str = ""

    @property
    def correct_hold(self) -> bool:
        """What every request gets at level 3 with the state known: its answer held, a ticket."""
        return self.status == 202 and self.level == "3" and self.route == "held" and bool(self.ticket)


@dataclass
class Sample:
    replica: int
    sent: float
    received: float
    stale: bool


@dataclass
class Outcome:
    rate: float
    max_staleness: float
    answers: list[Answer] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    arrivals: dict[str, float] = field(default_factory=dict)  # applicant id -> when it reached the model
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (time, sentinel event, sentinel port)
    kill_sent: float = 0.0  # SIGKILL sent to the master
    killed_at: float = 0.0  # the master's process was gone (reaped): its connections were closed
    unknown_tickets: list[str] = field(default_factory=list)
    undecidable: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # each replica's log, for what went wrong
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds) this process's loop lagged > 50 ms

    # the sentinels ---------------------------------------------------------------
    def first_event(self, name: str) -> float | None:
        times = [t for t, event, _ in self.events if event == name and t >= self.kill_sent]
        return min(times) if times else None

    def last_event(self, name: str | None = None) -> float | None:
        times = [t for t, event, _ in self.events if (name is None or event == name) and t >= self.kill_sent]
        return max(times) if times else None

    @property
    def failover_at(self) -> float | None:
        """When a sentinel announced the master the fleet ends on: no gateway can confirm its state before.

        Usually the one failover the kill caused; on a loaded machine the sentinels sometimes
        elect twice (the promoted master missed their pings for `down-after`), and the fleet
        can only settle on the second. Durations are from `kill_sent` (the SIGKILL);
        `killed_at` says from when a request was sent to a master that was surely gone."""
        return self.last_event("+switch-master")

    # the clients' view -----------------------------------------------------------
    def recovered_at(self, replica: int | None = None) -> float | None:
        """When the replica (default: every one) held every request correctly again for good.

        The send time of the first request after the replica's last answer that was not a
        level-3 hold; None while its last answer is still not one.
        """
        if replica is None:
            times = [self.recovered_at(r) for r in sorted({a.replica for a in self.answers})]
            return None if not times or None in times else max(times)  # type: ignore[type-var]
        mine = sorted((a for a in self.answers if a.replica == replica), key=lambda a: a.sent)
        wrong = [i for i, a in enumerate(mine) if not a.correct_hold]
        if not wrong:
            return self.kill_sent
        if wrong[-1] + 1 >= len(mine):
            return None
        return mine[wrong[-1] + 1].sent

    # the model's view ------------------------------------------------------------
    def stale_runs(self, replica: int) -> list[tuple[float, float]]:
        """Intervals in which the replica surely did not know its state: from the answer of the first
        "stale" of a run of readyz samples to the sending of its last one."""
        runs: list[tuple[float, float]] = []
        first: Sample | None = None
        last: Sample | None = None
        for sample in sorted((s for s in self.samples if s.replica == replica), key=lambda s: s.sent):
            if sample.stale:
                first = first or sample
                last = sample
            elif first is not None and last is not None:
                runs.append((first.received, last.sent))
                first = last = None
        if first is not None and last is not None:
            runs.append((first.received, last.sent))
        return runs

    def reached_model_while_unknown(self) -> list[Answer]:
        """Requests that reached the model while their replica did not know its state.

        Sent after the replica was seen stale, and at the model before it was last seen
        stale in that same run of samples: so the replica planned the request knowing
        the state was unknown, and forwarded it anyway.
        """
        found = []
        for replica in {a.replica for a in self.answers}:
            runs = self.stale_runs(replica)
            for answer in (a for a in self.answers if a.replica == replica):
                arrived = self.arrivals.get(_ident(answer.index))
                if arrived is not None and any(start < answer.sent and arrived < end for start, end in runs):
                    found.append(answer)
        return found

    def noticed_at(self, replica: int) -> float | None:
        """When the replica was first seen failing closed after the kill (its readyz answered "stale")."""
        stale = [s.received for s in self.samples if s.replica == replica and s.stale and s.sent >= self.kill_sent]
        return min(stale) if stale else None

    def reached_model_before_noticed(self) -> list[Answer]:
        """Requests sent after the master was gone that reached the model before their replica was seen stale."""
        found = []
        noticed_by = {r: self.noticed_at(r) for r in {a.replica for a in self.answers}}
        for answer in self.answers:
            noticed = noticed_by[answer.replica]
            arrived = self.arrivals.get(_ident(answer.index))
            if arrived is not None and answer.sent >= self.killed_at and noticed is not None and arrived < noticed:
                found.append(answer)
        return found

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for a in self.answers:
            key = f"{a.status} {a.route or a.error or ''}".strip()
            statuses[key] = statuses.get(key, 0) + 1
        recovered = self.recovered_at()
        failover = self.failover_at
        noticed = [self.noticed_at(r) for r in sorted({a.replica for a in self.answers})]
        last_noticed = max(noticed) if noticed and None not in noticed else None  # type: ignore[type-var]
        ticketed = [a.ticket for a in self.answers if a.ticket]
        return {
            "requests": len(self.answers),
            "statuses": dict(sorted(statuses.items())),
            "errors": sorted({a.error for a in self.answers if a.error}),
            "failover_s": _since(failover, self.kill_sent),
            "odown_s": _since(self.first_event("+odown"), self.kill_sent),
            "noticed_s": _since(last_noticed, self.kill_sent),
            "recovered_s": _since(recovered, self.kill_sent),
            "bound_s": round(failover - self.kill_sent + self.max_staleness, 2) if failover else None,
            "reached_model_while_unknown": len(self.reached_model_while_unknown()),
            "reached_model_before_noticed": len(self.reached_model_before_noticed()),
            "tickets": len(ticketed),
            "tickets_present": len(ticketed) - len(self.unknown_tickets),
            "tickets_decided": len(ticketed) - len(self.unknown_tickets) - len(self.undecidable),
        }

    def problems(self) -> list[str]:
        """What went against the requirement (empty: nothing)."""
        out = []
        summary = self.summary()
        odd = [a for a in self.answers if not (a.status == 202 and a.ticket) and not
               (a.status == 503 and a.error == "store_unavailable")]
        if odd:
            out.append(f"{len(odd)} answer(s) neither a ticket nor 503 store_unavailable, e.g. {_show(odd[0])}")
        before = [a for a in self.answers if a.done < self.kill_sent]
        if not before or not all(a.correct_hold for a in before):
            wrong = [a for a in before if not a.correct_hold]
            out.append(f"{len(wrong)} of {len(before)} answered before the kill not held at level 3"
                       + (f", e.g. {_show(wrong[0])}" if wrong else ""))
        if not any(a.status == 503 for a in self.answers):
            out.append("no request was refused: the outage did not happen")
        if self.failover_at is None:
            out.append("the sentinels announced no new master")
        recovered = self.recovered_at()
        if recovered is None:
            out.append("the fleet did not recover")
        else:
            after = [a for a in self.answers if a.sent >= recovered]
            if len(after) < self.rate:  # at least a second of load after recovery, all held correctly
                out.append(f"only {len(after)} request(s) after the recovery")
            if summary["bound_s"] is not None and summary["recovered_s"] > summary["bound_s"]:
                out.append(f"recovered {summary['recovered_s']}s after the kill, past failover + max_staleness "
                           f"({summary['bound_s']}s)")
        unknown = self.reached_model_while_unknown()
        if unknown:
            out.append(f"{len(unknown)} request(s) reached the model while their replica's state was unknown, "
                       f"e.g. {_show(unknown[0])}")
        if self.unknown_tickets:
            out.append(f"{len(self.unknown_tickets)} ticket(s) that got a 202 are gone, e.g. {self.unknown_tickets[0]}")
        if self.undecidable:
            out.append(f"{len(self.undecidable)} ticket(s) could not be decided, e.g. {self.undecidable[0]}")
        return out

    def timeline(self, step: float = 0.25) -> str:
        """Requests by send time relative to the kill, for a report on what went wrong."""
        lines = []
        buckets: dict[int, dict[str, int]] = {}
        for a in self.answers:
            slot = int((a.sent - self.kill_sent) // step)
            key = f"{a.status}/{a.level}/{a.route or a.error}"
            buckets.setdefault(slot, {}).setdefault(key, 0)
            buckets[slot][key] += 1
        for slot in sorted(buckets):
            lines.append(f"  {slot * step:+6.2f}s {buckets[slot]}")
        for t, event, port in sorted(self.events):
            lines.append(f"  sentinel {port} {event} at {t - self.kill_sent:+.3f}s")
        for t, late in self.stalls:
            lines.append(f"  this process stalled {late:.3f}s at {t - self.kill_sent:+.3f}s")
        for replica in sorted({a.replica for a in self.answers}):
            runs = ", ".join(f"{s - self.kill_sent:+.3f}..{e - self.kill_sent:+.3f}" for s, e in self.stale_runs(replica))
            lines.append(f"  replica {replica} stale: {runs}")
        return "\n".join(lines)


def _since(moment: float | None, origin: float) -> float | None:
    return round(moment - origin, 2) if moment is not None else None


def _show(answer: Answer) -> str:
    return (f"#{answer.index} replica {answer.replica} status {answer.status} level {answer.level!r} route "
            f"{answer.route!r} {answer.error or ''} {answer.message[:160]!r} request {answer.request_id}")


def _ident(index: int) -> str:
    return f"f-{index}"


# running it ------------------------------------------------------------------------
def run(directory: Path, *, rate: float, before: float, after: float, replicas: int = 2, max_staleness: float = 1.0,
        down_after_ms: int = 1000, give_up: float = 60.0, pin: list[set[int]] | None = None) -> Outcome:
    """Start everything, send `rate` req/s, kill the master after `before` s, go on `after` s past recovery.

    `pin`: the CPUs of each gateway replica (default: wherever the kernel runs them).
    """
    topology = SentinelSet(directory / "redis", replicas=2, down_after_ms=down_after_ms).start()
    model = _start_model()
    config = write_config(directory / "gw", {"demo": {"v1": model[1]}}, store=topology.url,
                          policy={"oversight": {"initial_level": 3, "max_staleness": f"{max_staleness}s"}})
    gateways = [GatewayProcess(config, free_port(), log_path=directory / f"gateway-{i}.log") for i in range(replicas)]
    outcome = Outcome(rate, max_staleness)
    try:
        for i, gateway in enumerate(gateways):
            gateway.start()
            if pin:
                os.sched_setaffinity(gateway.proc.pid, pin[i % len(pin)])  # type: ignore[union-attr]
        asyncio.run(_drive(topology, gateways, model[1], outcome, rate=rate, before=before, after=after,
                           give_up=give_up))
    finally:
        for gateway in gateways:
            gateway.stop()
            outcome.logs.append(gateway.log())
        _stop(model[0])
        topology.stop()
    return outcome


async def _drive(topology: SentinelSet, gateways: list[GatewayProcess], model_url: str, outcome: Outcome, *,
                 rate: float, before: float, after: float, give_up: float) -> None:
    stop = asyncio.Event()
    watchers = [asyncio.create_task(_sample(g.port, i, stop, outcome)) for i, g in enumerate(gateways)]
    watchers += [asyncio.create_task(_sentinel_events(port, stop, outcome)) for port, _ in topology.sentinels]
    watchers.append(asyncio.create_task(_lag(stop, outcome)))
    pending: dict[asyncio.Task[Answer], float] = {}  # task -> when its request was sent
    done: list[Answer] = []
    started = time.monotonic()
    i = 0
    checked = 0.0
    while True:
        now = time.monotonic()
        if not outcome.killed_at and now - started >= before:
            await _kill_master(topology, outcome)
        elif outcome.killed_at and now - checked >= 0.25:  # not on every request: it sorts every answer
            checked = now
            for task in [t for t in pending if t.done()]:
                del pending[task]
                done.append(task.result())
            outcome.answers = done
            recovered = outcome.recovered_at()
            oldest = min(pending.values(), default=now)
            settled = outcome.last_event() or outcome.killed_at  # the sentinels' last word
            if recovered is not None and now - recovered >= after and oldest >= recovered and now - settled >= after:
                break
            if now - outcome.killed_at > give_up:
                break  # never recovered: problems() says so
        due = started + i / rate
        if due > now:
            await asyncio.sleep(due - now)
        replica = i % len(gateways)
        pending[asyncio.create_task(_one(gateways[replica].port, replica, i))] = time.monotonic()
        i += 1
    done.extend(await asyncio.gather(*pending))
    outcome.answers = sorted(done, key=lambda a: a.index)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*watchers, return_exceptions=True)
    status, _, body = await _http(_port(model_url), "GET", "/_arrivals")
    outcome.arrivals = {ident: t for t, ident in json.loads(body)} if status == 200 else {}
    await _check_tickets(gateways[0].port, outcome)


async def _kill_master(topology: SentinelSet, outcome: Outcome) -> None:
    """SIGKILL from this loop (a thread would note the time late when this process is starved), then wait
    for the process to be gone."""
    server = topology.server_on(topology.master_port())
    proc = server.proc
    assert proc is not None
    outcome.kill_sent = time.monotonic()
    proc.kill()
    while proc.poll() is None:
        await asyncio.sleep(0.001)
    outcome.killed_at = time.monotonic()
    server.proc = None


async def _one(port: int, replica: int, i: int) -> Answer:
    answer = Answer(i, replica, time.monotonic())
    body = json.dumps({"applicant": {"id": _ident(i)}}).encode()
    try:
        status, headers, raw = await asyncio.wait_for(_http(port, "POST", "/models/demo/predict", body, "client"), 15)
    except (OSError, asyncio.TimeoutError, ValueError, IndexError) as exc:
        answer.error, answer.done = f"transport: {exc.__class__.__name__}", time.monotonic()
        return answer
    answer.done = time.monotonic()
    answer.status, answer.level = status, headers.get("x-oversight-level", "")
    answer.route, answer.request_id = headers.get("x-oversight-route", ""), headers.get("x-request-id", "")
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    if status == 202:
        answer.ticket = doc.get("ticket")
    error = doc.get("error") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) else {}
    answer.error, answer.message = error.get("type"), error.get("message", "")
    return answer


async def _sample(port: int, replica: int, stop: asyncio.Event, outcome: Outcome) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        try:
            status, _, body = await asyncio.wait_for(_http(port, "GET", "/readyz"), 2)
            stale = json.loads(body)["checks"]["store"] == "stale"
            outcome.samples.append(Sample(replica, sent, time.monotonic(), stale))
        except Exception:  # noqa: BLE001 - a failed sample is no sample; the watcher goes on
            pass
        await asyncio.sleep(0.02)


async def _lag(stop: asyncio.Event, outcome: Outcome) -> None:
    """Note when this process fell behind (its own load and sampling were late then)."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        late = time.monotonic() - before - 0.01
        if late > 0.05:
            outcome.stalls.append((before, round(late, 3)))


async def _sentinel_events(port: int, stop: asyncio.Event, outcome: Outcome) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=port, socket_timeout=5)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(*SENTINEL_EVENTS)
        while not stop.is_set():
            message = await pubsub.get_message(timeout=0.05)
            if message is not None:
                outcome.events.append((time.monotonic(), message["channel"].decode(), port))
    finally:
        await pubsub.aclose()
        await client.aclose()


async def _check_tickets(port: int, outcome: Outcome) -> None:
    """Every ticket that got a 202 is still there, pending, and can be decided."""
    tickets = [a.ticket for a in outcome.answers if a.ticket]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for ticket in tickets:
        queue.put_nowait(ticket)
    decision = json.dumps({"action": "override", "response": {"decision": "approve"}, "note": "after the failover"})

    async def worker() -> None:
        while not queue.empty():
            ticket = queue.get_nowait()
            status, _, body = await _http(port, "GET", f"/review/tickets/{ticket}", token="reviewer")
            if status != 200 or json.loads(body).get("status") != "pending":
                outcome.unknown_tickets.append(ticket)
                continue
            status, _, _ = await _http(port, "POST", f"/review/tickets/{ticket}/decision", decision.encode(), "reviewer")
            if status != 200:
                outcome.undecidable.append(ticket)

    await asyncio.gather(*(worker() for _ in range(8)))


async def _http(port: int, method: str, path: str, body: bytes | None = None,
                token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange on its own connection (cheap enough for 200 req/s from one loop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n"
        if token:
            head += f"authorization: Bearer {TOKENS[token]}\r\n"
        if body is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await reader.read()
    finally:
        writer.close()
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    return int(lines[0].split()[1]), headers, rest


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _start_model(timeout: float = 15.0) -> tuple[subprocess.Popen, str]:
    """The recording model in its own process; its URL from the start line."""
    from gateway.demo import START_LINE_RE

    proc = subprocess.Popen([sys.executable, "-m", "tests.fleet.recording_model", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=dies_with_tests())
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    match = START_LINE_RE.match(proc.stdout.readline().strip() if ready else "")  # type: ignore[union-attr]
    if not match:
        proc.kill()
        raise RuntimeError(f"the recording model did not start (exit {proc.poll()})")
    return proc, match["url"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def medians(outcomes: list[Outcome]) -> dict[str, Any]:
    """Median and max of the timings over several runs."""
    out: dict[str, Any] = {}
    for key in ("failover_s", "noticed_s", "recovered_s", "bound_s"):
        values = [o.summary()[key] for o in outcomes if o.summary()[key] is not None]
        out[key] = {"median": round(statistics.median(values), 2), "max": max(values)} if values else None
    return out
