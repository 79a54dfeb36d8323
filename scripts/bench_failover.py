#!/usr/bin/env python3
"""Redis master killed under load: what the fleet did, repeated.

Each repetition starts everything afresh: a Redis master with two replicas and three
sentinels (quorum 2, `down-after-milliseconds` 1000), the model, and two gateway replicas
(separate `python -m gateway serve` processes) at level 3 on
`redis+sentinel://...` (writes confirmed on 1 Redis replica, the Sentinel default;
`oversight.max_staleness` 1 s). Load: `--rate` requests per second, open loop, to the
replicas in turn. After `--before` seconds the master gets SIGKILL; the load goes on until
`--after` seconds past the fleet's recovery. Then every ticket that got a 202 is read
back and decided. What is measured comes from outside the gateways
(`tests/fleet/failover.py`): the model notes each request that reaches it, each replica's
`/readyz` is sampled every 20 ms, the sentinels' events are subscribed to.

Per repetition: requests sent, their statuses (status and route), requests that reached
the model while their replica did not know its state, the failover time (SIGKILL to the
first sentinel's `+switch-master`), the time until every replica held every request
correctly again, the bound (failover + max_staleness), tickets 202'd / still present /
decidable, and PASS or FAIL (with what failed). Then medians and maxima.

    python scripts/bench_failover.py [--repetitions 10] [--rate 200] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fleet.failover import Outcome, run  # noqa: E402


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _statuses(summary: dict) -> str:
    return ", ".join(f"{key} {n}" for key, n in summary["statuses"].items())


def _stat(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s" if values else "none"


def report(i: int, outcome: Outcome) -> bool:
    s = outcome.summary()
    problems = outcome.problems()
    ok = not problems
    print(f"repetition {i}: {'PASS' if ok else 'FAIL'}")
    print(f"  requests sent {s['requests']}: {_statuses(s)}")
    print(f"  reached the model while state unknown: {s['reached_model_while_unknown']} "
          f"(sent after the kill, at the model before the replica was seen failing closed: "
          f"{s['reached_model_before_noticed']}; replicas seen failing closed {s['noticed_s']} s after the kill)")
    print(f"  failover (sentinels, SIGKILL to +switch-master) {s['failover_s']} s (+odown at {s['odown_s']} s); "
          f"fleet recovered {s['recovered_s']} s; bound (failover + max_staleness) {s['bound_s']} s")
    print(f"  tickets 202'd {s['tickets']} / still present {s['tickets_present']} / decidable {s['tickets_decided']}")
    for problem in problems:
        print(f"  problem: {problem}")
    if not ok:
        print(outcome.timeline())
    sys.stdout.flush()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second over both replicas")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of load after the fleet recovered")
    parser.add_argument("--replicas", type=int, default=2, help="gateway replicas")
    parser.add_argument("--max-staleness", type=float, default=1.0, help="oversight.max_staleness, seconds")
    parser.add_argument("--pin", action="store_true", help="pin gateway replica N to CPU N mod the CPU count")
    parser.add_argument("--keep", action="store_true", help="keep each repetition's folder (logs, Redis files)")
    parser.add_argument("--json", action="store_true", help="print every repetition's summary as JSON too")
    args = parser.parse_args()
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    cpus = os.cpu_count() or 1
    pins = [{i % cpus} for i in range(args.replicas)] if args.pin else None
    print(f"machine: {cpus} CPUs, python {sys.version.split()[0]}, load average before: {_load()}")
    print(f"setup: Redis master + 2 replicas + 3 sentinels (quorum 2, down-after 1000 ms, failover-timeout 2000 ms); "
          f"{args.replicas} gateway replicas at level 3, store_durability.replicas auto (1), timeout 1 s, "
          f"max_staleness {args.max_staleness:g} s{', pinned' if pins else ''}; {args.rate:g} req/s, SIGKILL of the "
          f"master after {args.before:g} s, {args.after:g} s of load after recovery")
    outcomes: list[Outcome] = []
    passed = 0
    started = time.monotonic()
    for i in range(1, args.repetitions + 1):
        directory = Path(tempfile.mkdtemp(prefix="gw-bench-failover-"))
        try:
            outcome = run(directory, rate=args.rate, before=args.before, after=args.after, replicas=args.replicas,
                          max_staleness=args.max_staleness, pin=pins)
        finally:
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
        outcomes.append(outcome)
        passed += report(i, outcome)
        if args.keep:
            print(f"  files: {directory}")
        if args.json:
            print(json.dumps(outcome.summary()))
    summaries = [o.summary() for o in outcomes]

    def values(key: str) -> list[float]:
        return [s[key] for s in summaries if s[key] is not None]

    print(f"summary over {len(outcomes)} repetitions ({time.monotonic() - started:.0f} s): {passed} PASS, "
          f"{len(outcomes) - passed} FAIL")
    print(f"  requests per repetition: median {statistics.median(values('requests')):.0f}; refused (503) in all: "
          f"{sum(n for s in summaries for k, n in s['statuses'].items() if k.startswith('503'))}; "
          f"neither 202 nor 503: {sum(n for s in summaries for k, n in s['statuses'].items() if k[:3] not in ('202', '503'))}")
    print(f"  reached the model while state unknown: {sum(values('reached_model_while_unknown')):.0f} in all")
    print(f"  failover (sentinels):               {_stat(values('failover_s'))}")
    print(f"  replicas seen failing closed after: {_stat(values('noticed_s'))}")
    print(f"  fleet recovered after:              {_stat(values('recovered_s'))}")
    lags = [s["recovered_s"] - s["failover_s"] for s in summaries if s["recovered_s"] is not None and s["failover_s"]]
    print(f"  recovered after the failover:       {_stat(lags)} (allowed: max_staleness {args.max_staleness:g} s)")
    print(f"  tickets 202'd {sum(values('tickets')):.0f}, still present {sum(values('tickets_present')):.0f}, "
          f"decidable {sum(values('tickets_decided')):.0f}")
    print(f"load average after: {_load()} (anything else running on the machine shows here and in the numbers)")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
