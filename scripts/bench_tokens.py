#!/usr/bin/env python3
"""Token revocation benchmark: how fast `POST /admin/tokens/{id}/revoke` reaches every replica.

The sibling of scripts/bench_levels.py part 1, with the same probing. Three gateway
replicas (separate `python -m gateway serve` processes) share one local redis-server. Per
flip: a fresh client token is issued at run time (`POST /admin/tokens`, not timed), one
prober thread per replica sends `POST /models/demo/predict` with it back to back over a
keep-alive connection until each replica answers it from the model, then the token is
revoked (through the replicas in turn) and each prober notes when its first 401 arrives.
A replica's revocation latency is that moment minus the moment the revocation was sent;
the flip's is the slowest replica's ("every replica"). Finally the evidence log of the
replica that took the call is checked for the `token_revoked` record of every flip.

    python scripts/bench_tokens.py                 # 50 flips (about half a minute)
    python scripts/bench_tokens.py --flips 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402
from bench_levels import PREDICT, ArmedProber, Conn, admin, pct, start_redis, summary  # noqa: E402

sys.path.insert(0, str(b.ROOT))


class Prober(ArmedProber):
    """Probes one replica with the flip's token: first until the model answers, then until it gets 401."""

    token = ""

    def arm_with(self, token: str) -> None:
        self.token = token
        self.arm()

    def _probe(self) -> dict:
        deadline = time.perf_counter() + 10
        while not self._stopping:
            try:
                status, _, _ = self.conn.request("POST", "/models/demo/predict", PREDICT, self.token)
            except ConnectionError:
                self.conn.close()
                continue
            answered = time.perf_counter()
            self.requests += 1
            sent_at = self.sent_at
            if status == 200:
                self.served.set()
            elif status == 401:
                if sent_at is None or answered < sent_at:
                    raise RuntimeError(f"{self.label}: 401 before the revocation was sent")
                return {"latency": answered - sent_at}
            else:
                raise RuntimeError(f"{self.label}: unexpected status {status}")
            if answered > deadline:
                raise TimeoutError(f"{self.label}: no 401 within 10 s of arming")
            time.sleep(self.pause)
        raise RuntimeError("stopped")


def revocation_latency(args: argparse.Namespace) -> dict:
    pause = args.interval_ms / 1000
    with b.tempdir() as tmp:
        redis_proc, redis_port = start_redis(tmp)
        store = f"redis://127.0.0.1:{redis_port}/0"
        up_port = b.free_port()
        upstream = b.demo_model(up_port)
        replicas, probers, ports, dirs = [], [], [], []
        try:
            for i in range(3):
                d = tmp / f"replica{i}"
                d.mkdir()
                port = b.free_port()
                config = b.write_config(d, up_port, port, store=store)
                replicas.append(b.gateway(config, port, log=d / "gateway.log"))
                ports.append(port)
                dirs.append(d)
            time.sleep(1.0)
            probers = [Prober(f"r{i}", port, pause) for i, port in enumerate(ports)]
            for p in probers:
                p.start()
            rows = []
            for flip in range(args.warmup + args.flips):
                target = flip % 3
                conn = Conn(ports[target])
                status, issued = admin(conn, "POST", "/admin/tokens", {"id": f"bench-{flip}", "roles": ["client"],
                                                                       "reason": f"bench flip {flip}"})
                if status != 201:
                    raise RuntimeError(f"issuing answered {status}: {issued}")
                for p in probers:
                    p.arm_with(issued["token"])
                for p in probers:
                    if not p.served.wait(10):
                        raise RuntimeError(f"{p.label} did not admit the new token within 10 s (flip {flip})")
                time.sleep(random.uniform(0.005, 0.015))
                conn.close()
                conn.connect()
                sent = time.perf_counter()
                for p in probers:
                    p.sent_at = sent
                status, answer = admin(conn, "POST", f"/admin/tokens/bench-{flip}/revoke", {"reason": f"bench flip {flip}"})
                answered = time.perf_counter()
                conn.close()
                if status != 200:
                    raise RuntimeError(f"revocation answered {status}: {answer}")
                per_replica = []
                for p in probers:
                    result = p.results.get(timeout=15)
                    if isinstance(result, Exception):
                        raise result
                    per_replica.append(result["latency"] * 1000)
                if flip >= args.warmup:
                    rows.append({"target": target, "call_ms": (answered - sent) * 1000, "latency_ms": per_replica,
                                 "confirmed": f"{answer['applied_by']}/{answer['replicas']}"})
            requests = sum(p.requests for p in probers)
        finally:
            for p in probers:
                p.shutdown()
            for proc in replicas:
                b.stop(proc)
            b.stop(upstream)
            b.stop(redis_proc)
        recorded = _revocations_recorded(dirs)

    every = [max(r["latency_ms"]) for r in rows]
    receiving = [r["latency_ms"][r["target"]] for r in rows]
    others = [v for r in rows for i, v in enumerate(r["latency_ms"]) if i != r["target"]]
    calls = [r["call_ms"] for r in rows]
    confirmations: dict[str, int] = {}
    for r in rows:
        confirmations[r["confirmed"]] = confirmations.get(r["confirmed"], 0) + 1
    print(f"token revocation: 3 replicas (python -m gateway serve) on one redis-server, {args.flips} flips "
          f"(+{args.warmup} warm-up), each a fresh token issued at run time, revoked through the replicas in turn")
    print(f"probing: one thread per replica, keep-alive raw HTTP/1.1, POST /models/demo/predict with the flip's token, "
          f"{args.interval_ms:g} ms pause after each answer; times in ms from the moment the revocation was sent "
          f"(nearest-rank percentiles over {len(rows)} flips)")
    print(f"  first 401 on EVERY replica (max of 3)        {summary(every)}")
    print(f"  first 401 on the replica that got the call   {summary(receiving)}")
    print(f"  first 401 on the two other replicas          {summary(others)}")
    print(f"  POST /admin/tokens/{{id}}/revoke answered      {summary(calls)}")
    print("  revocations' applied_by/replicas: " + ", ".join(f"{k} in {n} flips" for k, n in sorted(confirmations.items())))
    met = pct(every, 99) <= args.target_ms
    print(f"  target p99 <= {args.target_ms:g} ms (every replica): {'met' if met else 'NOT met'} ({pct(every, 99):.2f} ms)")
    print(f"  evidence: {recorded} token_revoked records in the replicas' logs for {args.warmup + args.flips} revocations "
          f"({requests} probe requests in all)")
    return {"every_ms": every, "call_ms": calls, "target_met": met, "recorded": recorded}


def _revocations_recorded(dirs: list[Path]) -> int:
    """token_revoked records in every replica's evidence log (read with the gateway's own reader)."""
    from gateway.evidence import LogReader

    count = 0
    for d in dirs:
        for slot in sorted((d / "data" / "evidence").glob("replica-*")):
            reader = LogReader.open(slot)
            reader.refresh()
            for idx in range(reader.size):
                record = reader.get(idx)
                if record.get("kind") == "action" and record.get("action") == "token_revoked":
                    count += 1
            reader.close()
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--interval-ms", type=float, default=1.0)
    parser.add_argument("--target-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; load average before: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    out = revocation_latency(args)
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
