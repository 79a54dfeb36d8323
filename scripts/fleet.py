#!/usr/bin/env python3
"""A fleet on one machine: N gateway replicas behind nginx, a Redis topology, load, and faults.

Everything is a real process on 127.0.0.1 and ends with this script, however it ends:
the demo model, Redis (Sentinel: a master, two replicas and three sentinels; a single
append-only redis-server; a 3-master Cluster; or no Redis, the embedded store), N
`gateway serve` processes, each with its own config file and data directory and all
sharing one evidence directory (each takes its own flock'ed `replica-N` slot there), and
nginx in front as the load balancer.

As a module (tests/fleet/test_fleet_script.py):

    with Fleet(replicas=3, store="sentinel", level=3, workdir=path) as fleet:
        fleet.url, fleet.replicas[0].url, fleet.replicas[0].data_dir, fleet.evidence_dir
        fleet.kill_replica(1); fleet.restart_replica(1)
        fleet.kill_redis_master(); fleet.restore_redis()
        fleet.kill_sentinel(); fleet.restart_sentinels()
        fleet.set_level(2)

As a command:

    .venv/bin/python scripts/fleet.py --replicas 3 --store sentinel --rate 200 --seconds 30 --faults replica,master,sentinel
    .venv/bin/python scripts/fleet.py --serve          # start it, print URLs and tokens, stop on Ctrl-C

The command sends open-loop load (a fixed rate, whatever the answers do) through nginx,
kills things with SIGKILL at spread-out times, brings each back a few seconds later, and
prints what held: per phase the statuses and errors, how long answers took to be right
again after each fault, any 5xx that should not be, and whether every ticket answered
202 is still in the review queue. Exit 0 when everything held, 1 otherwise (one
`problem:` line each), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/fleet.py`: the repository root holds tests/ and gateway/
    sys.path.insert(0, str(ROOT))

from scripts.fleetlib.common import FAULTS, PREDICT, STORES, TOKENS  # noqa: E402
from scripts.fleetlib.faults import report, run_faults  # noqa: E402
from scripts.fleetlib.topology import Fleet, Replica  # noqa: E402

__all__ = ["Fleet", "Replica", "main"]


# ------------------------------------------------------------------------------- the command
def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/fleet.py", description=__doc__.split("\n\n")[0],
        epilog="Exit 0: everything held; 1: something did not (one `problem:` line each); 2: usage.")
    parser.add_argument("--replicas", type=int, default=3, help="gateway replicas behind nginx (default %(default)s)")
    parser.add_argument("--store", choices=STORES, default="sentinel", help="control state store (default %(default)s)")
    parser.add_argument("--level", type=int, default=None, choices=range(5), metavar="0-4",
                        help="global oversight level (default: 3, every answer held with a ticket; 0 with --serve)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, open loop (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load runs (default %(default)s)")
    parser.add_argument("--faults", default="replica,master,sentinel",
                        help="comma-separated, in order, spread evenly over the run: replica, master, sentinel; "
                             "'' for none (default %(default)s)")
    parser.add_argument("--restore-after", type=float, default=None,
                        help="seconds after each fault to bring the killed process back (default: min(3, half a phase))")
    parser.add_argument("--port", type=int, default=0, help="nginx's port (default: a free one)")
    parser.add_argument("--workdir", help="where configs, data, evidence and logs go (default: a temporary folder, "
                                          "removed at the end)")
    parser.add_argument("--serve", action="store_true", help="only start the fleet, print URLs and tokens, stop on Ctrl-C")
    args = parser.parse_args(argv)
    if args.level is None:
        args.level = 0 if args.serve else 3
    args.fault_list = [] if args.serve else [f.strip() for f in args.faults.split(",") if f.strip()]
    for name in args.fault_list:
        if name not in FAULTS:
            parser.error(f"--faults: unknown fault {name!r} (one of {', '.join(FAULTS)})")
        if name == "master" and args.store not in ("sentinel", "redis"):
            parser.error(f"--faults master needs --store sentinel or redis (a {args.store} store has no master to kill)")
        if name == "sentinel" and args.store != "sentinel":
            parser.error("--faults sentinel needs --store sentinel")
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.store == "embedded" and args.replicas > 1:
        print("note: the embedded store keeps one state per replica: levels are set on each, and a ticket lives on "
              "the replica that took it", file=sys.stderr)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    return args


def _serve(fleet: Fleet) -> None:
    say = print
    say(f"fleet: {fleet.count} gateway replica(s) behind nginx, level {fleet.level}, store: {fleet.describe_store()}")
    say(f"  nginx        {fleet.url}        <- send requests here")
    for r in fleet.replicas:
        say(f"  replica {r.index}    {r.url}  config {r.config}  data {r.data_dir}")
    say(f"  demo model   {fleet.demo.url if fleet.demo else '?'}")
    say(f"  store        {fleet.store_url}")
    say(f"  evidence     {fleet.evidence_dir}  (verify: .venv/bin/gateway evidence verify "
        f"{fleet.evidence_dir}/replica-0 --key {fleet.signing_key_pub})")
    say("  tokens       " + ", ".join(f"{role} {token}" for role, token in TOKENS.items()))
    say(f"  try          curl -si {fleet.url}{PREDICT} -H 'authorization: Bearer {TOKENS['client']}' "
        "-d '{\"applicant\": {\"id\": \"a-1\"}}'")
    say("Ctrl-C stops everything.")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    where = Path(args.workdir).resolve() if args.workdir else None
    print(f"starting: nginx, {args.replicas} replica(s), store {args.store}, the demo model"
          + (f", in {where}" if where else ""), flush=True)
    try:
        with Fleet(args.replicas, args.store, args.level, where, port=args.port) as fleet:
            if args.serve:
                _serve(fleet)
                return 0
            print(f"fleet: {args.replicas} replica(s) behind nginx {fleet.url}; {fleet.describe_store()}; level "
                  f"{args.level}; {args.rate:g} req/s for {args.seconds:g}s; faults: "
                  f"{', '.join(args.fault_list) or 'none'}", flush=True)
            phases, problems, load = run_faults(fleet, rate=args.rate, seconds=args.seconds, faults=args.fault_list,
                                                restore_after=args.restore_after,
                                                say=lambda line: print(line, flush=True))
            problems = report(fleet, phases, problems, load, seconds=args.seconds)
            return 1 if problems else 0
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0 if args.serve else 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
