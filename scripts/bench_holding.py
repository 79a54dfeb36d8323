#!/usr/bin/env python3
"""Level 3 holding: how many requests per second the gateway can hold for a human, and how fast it says so.

At level 3 every answer waits for a human; a client that sent `Prefer: respond-async` gets
`202 Accepted` with its ticket as soon as the ticket is durable in the store (SQLite
committed, or Redis written and confirmed). Two gateways (one worker each, pinned to cpu0,
wrk and the raw upstream on cpu1), one on the embedded store, one on a local redis-server
(append-only file, fsync every second), driven in interleaved rounds:
- the most held requests per second (wrk, 32 connections, back to back);
- the 202's latency at a fixed 500 holds per second (scripts/loadgen.py --rate, measured
  from when each request was due), p50 and p99.

    python scripts/bench_holding.py [--rounds 3] [--seconds 5] [--rate 500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

COMPLETION = '{"model":"demo","messages":[{"role":"user","content":"Should applicant a-17 get the loan?"}]}'
HELD = {"prefer": "respond-async"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0, help="holds per second for the latency runs")
    args = parser.parse_args()
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.raw_upstream(up_port, "1")
        redis_dir = tmp / "redis"
        redis_dir.mkdir()
        redis_port = b.free_port()
        redis = b.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(redis_dir)], redis_port, "1")
        stores = {"embedded": "embedded", "redis": f"redis://127.0.0.1:{redis_port}/0"}
        gateways, urls = {}, {}
        try:
            for name, store in stores.items():
                port = b.free_port()
                (tmp / f"gateway-{name}").mkdir()
                config = b.write_config(tmp / f"gateway-{name}", up_port, port, store=store,
                                        policy_overrides="oversight: {initial_level: 3}\n")
                gateways[name] = b.gateway(config, port, "0", log=tmp / f"{name}.log")
                urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
            for name in stores:  # warm up
                b.wrk(urls[name], connections=32, seconds=2, body=COMPLETION, token=b.CLIENT_TOKEN, cpus="1", headers=HELD)
            held: dict[str, list[float]] = {name: [] for name in stores}
            cpu: dict[str, list[float]] = {name: [] for name in stores}
            p50: dict[str, list[float]] = {name: [] for name in stores}
            p99: dict[str, list[float]] = {name: [] for name in stores}
            errors = {name: 0 for name in stores}
            for _ in range(args.rounds):
                for name in stores:
                    before = b.tree_cpu_seconds(gateways[name].pid)
                    result = b.wrk(urls[name], connections=32, seconds=args.seconds, body=COMPLETION, token=b.CLIENT_TOKEN,
                                   cpus="1", headers=HELD)
                    cpu[name].append((b.tree_cpu_seconds(gateways[name].pid) - before) / max(1, result["requests"]) * 1e6)
                    held[name].append(result["rps"])
                    errors[name] += result["errors"]
                for name in stores:
                    result = b.pyload(urls[name], connections=16, seconds=args.seconds, body=COMPLETION,
                                      token=b.CLIENT_TOKEN, cpus="1", headers=HELD, rate=args.rate)
                    p50[name].append(result["p50"])
                    p99[name].append(result["p99"])
                    errors[name] += result["errors"]
        finally:
            for proc in gateways.values():
                b.stop(proc)
            b.stop(redis)
            b.stop(upstream)
    print(f"level 3 holding: {args.rounds} interleaved rounds of {args.seconds:g}s; each gateway pinned to cpu0, "
          f"load, the raw upstream and redis-server on cpu1; every answer a 202 with a durable ticket; medians")
    print(f"{'store':10}{'held req/s':>12}{'CPU/hold us':>13}{'202 p50 ms':>12}{'202 p99 ms':>12}  at {args.rate:g}/s{'errors':>9}")
    for name in stores:
        print(f"{name:10}{b.median(held[name]):12.0f}{b.median(cpu[name]):13.1f}{b.median(p50[name]):12.2f}"
              f"{b.median(p99[name]):12.2f}{'':10}{errors[name]:7d}")
    print("targets: >= 1,000 held requests/s on each store; 202 p99 <= 10 ms at 500 holds/s")
    return 0 if not any(errors.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
