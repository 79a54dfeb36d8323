"""Faults injected under load (kill -9 of a replica, the Redis master, a sentinel) and what held."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from scripts.fleetlib.load import Answer, Load, check_tickets
from scripts.fleetlib.master import MasterWatch
from scripts.fleetlib.topology import Fleet

# ------------------------------------------------------------------------------- faults and what held
@dataclass
class Phase:
    """From one fault (or the start) to the next: what was done, and the answers that ended meanwhile."""

    name: str
    kind: str  # "start", "replica", "master", "sentinel"
    at: float  # when the fault began (monotonic)
    fault_done: float = 0.0  # when the faulted process was dead
    target: str | None = None  # a killed replica's address (host:port), as nginx names it
    detail: str = ""
    restored: str = ""
    answers: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovered_s: float | None = None
    disrupted: int = 0


def expected_statuses(level: int) -> set[int]:
    """What a healthy fleet answers `POST /models/demo/predict` with at a level (no Prefer: a held one is 202)."""
    return {200} if level <= 1 else {200, 202} if level == 2 else {202}


def tolerated(answer: Answer, phase: Phase) -> bool:
    """A wrong answer the fault explains: what the gateway promises under it, not a defect.

    - Redis master lost: the gateway fails closed, `503 store_unavailable` (nothing that needs the store can
      happen) or, while the state is unknown but a ticket can be written, a level-4 human task (202, level 4).
    - A replica killed: nginx's own 502 for a request it had sent to that replica over a connection open when
      the replica died (nginx never sends a POST twice: the dead replica may have acted on it). A connection
      refused is not one: nginx sends that request to the next replica.
    """
    if phase.kind == "master":
        return (answer.status == 503 and answer.error_type == "store_unavailable") or \
               (answer.status == 202 and answer.level == "4")
    if phase.kind == "replica":
        return answer.status == 502 and answer.by_nginx and served_by(answer) == phase.target \
            and answer.done >= phase.at and answer.sent < phase.fault_done + 1.0
    return False


def served_by(answer: Answer) -> str | None:
    """The replica (host:port) nginx got the answer from, or failed on: the last one it tried."""
    return answer.upstream.split(",")[-1].strip() if answer.upstream else None


def describe_answer(answer: Answer, level: int | None = None) -> str:
    """`202`, `503 store_unavailable`, `502 from nginx`, `202 at level 4` (when not the fleet's level)..."""
    if answer.status == 0:
        return f"no answer ({answer.error})"
    what = f"{answer.status}"
    if answer.error_type:
        what += f" {answer.error_type}"
    elif answer.by_nginx:
        what += " from nginx"
    if level is not None and answer.level is not None and answer.level != str(level):
        what += f" at level {answer.level}"
    return what


def judge(phases: list[Phase], level: int) -> None:
    """Fill in each phase's recovery time and problems."""
    good = expected_statuses(level)
    for phase in phases:
        answers = sorted(phase.answers, key=lambda a: a.due)
        bad = [a for a in answers if a.status not in good]
        phase.disrupted = len(bad)
        if not bad:
            phase.recovered_s = 0.0 if phase.kind != "start" else None
        else:
            last = answers.index(bad[-1])
            if last + 1 < len(answers):
                phase.recovered_s = max(0.0, answers[last + 1].due - phase.at)
            else:
                phase.problems.append(f"{phase.name}: answers were still wrong when the phase ended "
                                      f"(last: {describe_answer(bad[-1], level)}, request {bad[-1].request_id})")
        wrong: dict[str, list[Answer]] = {}
        for a in bad:
            if not tolerated(a, phase):
                wrong.setdefault(describe_answer(a, level), []).append(a)
        for what, items in sorted(wrong.items()):
            ids = ", ".join(a.request_id for a in items[:3])
            kind = "a 5xx that should not be" if 500 <= items[0].status < 600 else "unexpected"
            phase.problems.append(f"{phase.name}: {len(items)} answer(s) {what} ({kind}; expected "
                                  f"{'/'.join(map(str, sorted(good)))}; e.g. {ids})")


def counts(answers: list[Answer], key: Callable[[Answer], Any]) -> str:
    tally: dict[Any, int] = {}
    for a in answers:
        k = key(a)
        if k is not None:
            tally[k] = tally.get(k, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], str(kv[0])))) or "-"


def run_faults(fleet: Fleet, *, rate: float, seconds: float, faults: list[str], say: Callable[[str], None] = print,
               restore_after: float | None = None) -> tuple[list[Phase], list[str], Load]:
    """Load through nginx for `seconds`, the faults at even intervals, each undone `restore_after` s later.

    Returns the phases, the problems found (one line each) and the load (its answers)."""
    gap = seconds / (len(faults) + 1)
    restore_after = restore_after if restore_after is not None else min(3.0, gap / 2)
    watch = MasterWatch(fleet).start()
    load = Load(fleet.url, rate).start()
    load.watch = watch
    t0 = load.started
    phases = [Phase("before any fault", "start", t0)]
    pending: list[tuple[float, str, Any]] = [(t0 + gap * (k + 1), "fault", (k, name)) for k, name in enumerate(faults)]
    pending.append((t0 + seconds, "end", None))
    problems: list[str] = []
    failovers: list[tuple[Phase, int]] = []  # master kills whose failover is not seen yet
    replica_kills = 0
    sentinel_kills = 0
    while pending:
        pending.sort(key=lambda p: p[0])
        when, what, arg = pending[0]
        for phase, old in list(failovers):
            promoted = fleet.failed_over(old)
            if promoted is not None:
                phase.detail = f"sentinels promoted :{promoted} at +{time.monotonic() - phase.at:.1f}s"
                failovers.remove((phase, old))
        now = time.monotonic()
        if now < when:
            time.sleep(min(0.05, when - now))
            continue
        pending.pop(0)
        if what == "end":
            break
        if what == "fault":
            k, name = arg
            phase = Phase("", name, time.monotonic())
            if name == "replica":
                i = (1 + replica_kills) % fleet.count
                replica_kills += 1
                pid = fleet.replicas[i].pid
                fleet.kill_replica(i)
                phase.name = f"kill -9 replica {i}"
                phase.target = f"127.0.0.1:{fleet.replicas[i].port}"
                phase.detail = f"pid {pid}, port {fleet.replicas[i].port}"
                pending.append((phase.at + restore_after, "restart_replica", (phase, i)))
            elif name == "master":
                port = fleet.kill_redis_master()
                phase.name = f"kill -9 redis master :{port}"
                pending.append((phase.at + restore_after, "restore_redis", (phase, port)))
                if fleet.store == "sentinel":
                    failovers.append((phase, port))
            elif name == "sentinel":
                n = sentinel_kills % 3
                sentinel_kills += 1
                port = fleet.kill_sentinel(n)
                phase.name = f"kill -9 sentinel :{port}"
                pending.append((phase.at + restore_after, "restart_sentinels", (phase, port)))
            phase.fault_done = time.monotonic()
            phases.append(phase)
            say(f"  {phase.at - t0:5.1f}s  {phase.name}")
            continue
        phase, detail = arg
        if what == "restart_replica":
            started = time.monotonic()
            try:
                replica = fleet.restart_replica(detail)
            except RuntimeError as exc:
                problems.append(f"{phase.name}: the replica did not come back: {exc}")
                continue
            phase.restored = f"restarted at +{started - phase.at:.1f}s, ready in {time.monotonic() - started:.1f}s"
            slots = [Path(s).name for s in replica.evidence_slots()]
            if len(slots) >= 2 and slots[-1] != slots[-2]:  # its slot was held, e.g. by a replica adopting the log
                phase.restored += f", writing {slots[-1]} (its {slots[-2]} was taken)"
            elif len(slots) >= 2:
                phase.restored += f", continued {slots[-1]}"
        elif what == "restore_redis":
            if fleet.store == "sentinel":
                promoted = fleet.failed_over(detail)
                if promoted is None:
                    if time.monotonic() - phase.at > 30:
                        problems.append(f"{phase.name}: the sentinels promoted no replica within 30 s")
                        continue
                    pending.append((time.monotonic() + 0.1, what, arg))  # not yet: the failover comes first
                    continue
            started = time.monotonic()
            fleet.restore_redis()
            phase.restored = (f"restarted at +{started - phase.at:.1f}s"
                              + (" as a replica" if fleet.store == "sentinel" else " (append-only file reloaded)"))
        elif what == "restart_sentinels":
            started = time.monotonic()
            fleet.restart_sentinels()
            phase.restored = f"restarted at +{started - phase.at:.1f}s"
        say(f"  {time.monotonic() - t0:5.1f}s  {phase.name}: {phase.restored}")
    answers = load.stop()
    watch.stop()
    # An answer belongs to the phase it ended in: one in flight when a fault began is that fault's.
    for a, nxt in zip(phases, phases[1:] + [None]):
        end = nxt.at if nxt is not None else float("inf")
        a.answers = [x for x in answers if a.at <= x.done < end or (a.kind == "start" and x.done < a.at)]
    judge(phases, fleet.level)
    for phase in phases:
        problems.extend(phase.problems)
    for replica in fleet.replicas:
        if not replica.alive:
            problems.append(f"replica {replica.index} is not running at the end (exit "
                            f"{replica.process.proc.returncode if replica.process and replica.process.proc else '?'})")
    return phases, problems, load


def report(fleet: Fleet, phases: list[Phase], problems: list[str], load: Load, *, seconds: float,
           say: Callable[[str], None] = print) -> list[str]:
    """Print what held; returns every problem (the ones found while running, and the ticket check's)."""
    problems = list(problems)
    answers = load.answers
    say("")
    say(f"{'phase':<30} {'at':>6} {'requests':>8}  {'statuses':<44} {'recovered':>9}")
    for phase in phases:
        statuses = counts(phase.answers, lambda a: describe_answer(a, fleet.level))
        at = f"{phase.at - load.started:.1f}s"
        rec = "-" if phase.recovered_s is None else f"{phase.recovered_s:.2f}s"
        if phase.kind != "start" and phase.recovered_s is None:
            rec = "never"
        say(f"{phase.name:<30} {at:>6} {len(phase.answers):>8}  {statuses:<44} {rec:>9}")
        notes = "; ".join(x for x in (phase.detail, phase.restored) if x)
        if notes:
            say(f"{'':<30} {'':>6} {'':>8}  {notes}")
    answered = [a for a in answers if a.status]
    latencies = sorted((a.done - a.due) * 1000 for a in answered)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    span = max((a.due for a in answers), default=load.started) - load.started
    say("")
    say(f"load: {len(answers)} requests at {len(answers) / span if span > 0 else 0:.1f}/s (asked {load.rate:g}/s) "
        f"through nginx {fleet.url}; {len(answered)} answered; latency from the scheduled send p50 {pct(0.5):.1f} ms, "
        f"p99 {pct(0.99):.1f} ms, max {latencies[-1] if latencies else float('nan'):.1f} ms")
    errors = counts([a for a in answers if a.error_type or a.error], lambda a: a.error_type or a.error)
    say(f"errors: {errors}")
    fives = [p for p in problems if "a 5xx that should not be" in p]
    say(f"unexpected 5xx: {'none' if not fives else f'{len(fives)} kind(s), below'}")
    tickets = [a.ticket for a in answers if a.ticket]
    if tickets:
        bases = [r.url for r in fleet.replicas if r.alive] if fleet.store == "embedded" else [fleet.url]
        seen = check_tickets(bases, tickets)
        gone = [t for t, status in seen.items() if status != 200]
        say(f"tickets: {len(tickets)} answered 202, {len(tickets) - len(gone)} still in the review queue")
        if gone:
            lost = set(gone)
            times = sorted(a.done - load.started for a in answers if a.ticket in lost)
            problems.append(f"tickets: {len(gone)} of {len(tickets)} answered 202 are gone, answered between "
                            f"+{times[0]:.1f}s and +{times[-1]:.1f}s (e.g. {', '.join(gone[:3])}: {seen[gone[0]]})")
    elif fleet.level >= 3:
        say("tickets: none answered 202")
    watch = load.watch
    if watch is not None and watch.masters:
        say(f"redis master: {watch.describe(load.started)}")
        failovers = len(watch.masters) - 1
        kills = sum(1 for p in phases if p.kind == "master")
        if failovers > kills:
            problems.append(f"redis: {failovers} failovers for {kills} master kill(s): {watch.describe(load.started)}")
    layout = []
    for replica in fleet.replicas:
        slots = [Path(s).name for s in replica.evidence_slots()]
        layout.append(f"replica {replica.index} -> {'/'.join(dict.fromkeys(slots)) or '?'}")
    say(f"evidence: {fleet.evidence_dir} ({', '.join(layout)}); checkpoints signed by {fleet.signing_key_pub.name}")
    if problems:
        for line in problems:
            say(f"problem: {line}")
    else:
        say("held: every answer was the expected one or one its fault explains, and every phase recovered")
    return problems


