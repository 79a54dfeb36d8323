#!/usr/bin/env python3
"""Evidence log throughput and append latency, with group fsync on.

For each mode (body encryption off / on) it runs a few times: append N records
of about 1 KB (plus a small request/response body) as fast as one thread can,
with the background group fsync running every 50 ms and checkpoints every 1000
records, then `sync_now()` so every record is on disk before the clock stops.
It prints the median sustained records/s and the p50/p99 cost of one
`append()` call. The directory must be on a real disk (tmpfs makes fsync free):
by default it is a temporary directory next to this script.

    python scripts/bench_evidence.py [--records 20000] [--runs 3] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.evidence import EvidenceLog, canonical, generate_signing_key, verify_log  # noqa: E402

TARGET_RPS = 5000


def make_record(i: int) -> dict:
    """A decision record of about 1 KB once canonically encoded."""
    return {
        "kind": "decision",
        "time": time.time(),
        "request_id": f"req-{i:012d}-7f3a9c",
        "model": "gpt-4o-mini" if i % 3 else "claude-3-haiku",
        "tenant": "acme-prod",
        "principal": {"sub": "svc-checkout", "roles": ["caller", "batch"], "token_id": "tok-5b1e0c2d"},
        "route": {"method": "POST", "path": "/v1/chat/completions", "upstream": "https://upstream.invalid/v1"},
        "decision": "hold" if i % 50 == 0 else "allow",
        "policy": {"id": "pii-and-spend", "version": 17, "rules": ["pii.email", "spend.daily", "tools.shell"]},
        "reasons": ["no PII detected", "daily spend 41.2/100 USD", "tool call list empty"],
        "usage": {"prompt_tokens": 812, "completion_tokens": 240, "cost_usd": 0.00213},
        "latency_ms": {"policy": 0.41, "upstream": 512.3, "total": 514.9},
        "headers": {"user-agent": "acme-client/4.2.1", "x-request-id": f"{i:032x}", "content-type": "application/json"},
        "notes": "x" * 300,
    }


BODIES = {"request": b'{"messages":[{"role":"user","content":"' + b"q" * 200 + b'"}]}',
          "response": b'{"choices":[{"message":{"content":"' + b"a" * 200 + b'"}}]}'}


def run_once(directory: Path, n: int, encrypt: bool) -> tuple[float, list[int]]:
    log = EvidenceLog.open(directory, signing_key=generate_signing_key(),
                           encryption_key=os.urandom(32) if encrypt else None, key_id=None,
                           fsync_interval=0.05, checkpoint_every=1000, checkpoint_seconds=10.0)
    costs = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for i in range(n):
        rec = make_record(i)
        t = clock()
        log.append(rec, BODIES)
        costs.append(clock() - t)
    log.sync_now()
    elapsed = time.perf_counter() - start
    log.close()
    return n / elapsed, costs


def percentile(sorted_values: list[int], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))] / 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()

    size = len(canonical(make_record(0)))
    print(f"evidence log benchmark: {args.records} records x {args.runs} runs per mode; record {size} B "
          f"+ bodies {sum(map(len, BODIES.values()))} B; group fsync every 50 ms; checkpoint every 1000")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpu(s)")
    worst = float("inf")
    for encrypt in (False, True):
        rates, costs = [], []
        for _ in range(args.runs):
            tmp = Path(tempfile.mkdtemp(prefix="bench-evidence-", dir=args.dir))
            try:
                rate, c = run_once(tmp, args.records, encrypt)
                if not verify_log(tmp).ok:
                    print("  verification FAILED after the run")
                    return 1
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            rates.append(rate)
            costs.extend(c)
        costs.sort()
        median = statistics.median(rates)
        worst = min(worst, median)
        mode = "encryption on " if encrypt else "encryption off"
        print(f"  {mode}: {median:8.0f} records/s sustained (median; runs: "
              f"{', '.join(f'{r:.0f}' for r in rates)}); append p50 {percentile(costs, 0.50):.1f} us, "
              f"p99 {percentile(costs, 0.99):.1f} us, max {costs[-1] / 1000:.0f} us")
    verdict = "meets" if worst >= TARGET_RPS else "MISSES"
    print(f"target >= {TARGET_RPS} records/s: {verdict} (slowest mode {worst:.0f} records/s)")
    return 0 if worst >= TARGET_RPS else 1


if __name__ == "__main__":
    sys.exit(main())
