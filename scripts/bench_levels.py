#!/usr/bin/env python3
"""Oversight-level benchmark: how fast a kill reaches every replica, and what sampling costs.

Part 1, kill latency. Five gateway replicas (`--replicas`; separate `python -m gateway
serve` processes) share one local redis-server. One prober thread per replica sends
`POST /models/demo/predict` back to back over a keep-alive connection, with a short pause
between an answer and the next request. Per flip: `POST /admin/kill` (to the replicas in
turn), and each prober notes when its first answer routed `human` (202, the model not
called) arrives; the replica's kill latency is that moment minus the moment the kill was
sent, and the flip's latency is the slowest replica's ("every replica"). Then the level is
lowered back to 0 (the benchmark's policy turns two-person lowering off) and the probers
confirm every replica answers from the model again before the next flip.

Part 2, kill under load. Three replicas in front of a demo model that takes a second per
answer, 200 requests per second spread over them (about 200 answers in flight at any
moment). `POST /admin/kill` lands mid-load; every answer the clients receive after the
call answered is checked: none may be a model's answer (each must be a human task), on
any replica.

Part 3, the cost of sampling at level 0. Two gateways, one with the default policy (2 %
of level-0 requests sampled for post-hoc review), one with `sample_rate: {0: 0.0}`,
driven alternately with wrk like scripts/bench_proxy.py; median req/s and the ratio.

    python scripts/bench_levels.py                    # all three parts (about a minute and a half)
    python scripts/bench_levels.py --flips 20 --rounds 0 --load-seconds 0
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

PREDICT = '{"applicant":{"id":"a-17","group":"A","income":52000}}'
REFUSED = "human"
SERVED = ("auto", "sampled")


# one keep-alive HTTP/1.1 connection on a raw socket -------------------------------------
class Conn:
    """Minimal keep-alive HTTP/1.1 client: cheap enough to probe every millisecond from Python."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = None
        self.buf = b""

    def connect(self) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, method: str, path: str, body: str | bytes, token: str) -> None:
        if self.sock is None:
            self.connect()
        data = body.encode() if isinstance(body, str) else body
        head = (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer {token}\r\ncontent-length: {len(data)}\r\n\r\n").encode()
        self.sock.sendall(head + data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def receive(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                parts.append(self.buf[:size])
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
            body = b"".join(parts)
        else:
            raise RuntimeError(f"answer without a length: {head!r}")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def request(self, method: str, path: str, body: str | bytes, token: str) -> tuple[int, dict[str, str], bytes]:
        self.send(method, path, body, token)
        return self.receive()


# the probers ------------------------------------------------------------------------
class ArmedProber(threading.Thread):
    """One replica probed from its own thread while armed; `_probe` says when the change it waits for arrived.

    The main thread arms every prober, waits until each has `served` (the replica answers as
    before the change), sets `sent_at` just before it sends the change, and collects one
    result (or the exception) per prober from `results`.
    """

    def __init__(self, name: str, port: int, pause: float) -> None:
        super().__init__(name=f"prober-{name}", daemon=True)
        self.label = name
        self.conn = Conn(port)
        self.pause = pause
        self.armed = threading.Event()
        self.served = threading.Event()  # an answer as before the change came since arming
        self.sent_at: float | None = None  # set by the main thread just before the change is sent
        self.results: queue.Queue = queue.Queue()
        self.requests = 0
        self._stopping = False

    def arm(self) -> None:
        self.sent_at = None
        self.served.clear()
        self.armed.set()

    def shutdown(self) -> None:
        self._stopping = True
        self.armed.set()

    def run(self) -> None:
        while True:
            self.armed.wait()
            if self._stopping:
                self.conn.close()
                return
            try:
                self.results.put(self._probe())
            except Exception as exc:  # reported by the main thread
                self.results.put(exc)
                self.conn.close()
            self.armed.clear()

    def _probe(self) -> dict:
        raise NotImplementedError


class Prober(ArmedProber):
    """Probes one replica while armed: first until it answers from the model, then until it refuses after the kill."""

    def _probe(self) -> dict:
        deadline = time.perf_counter() + 10
        while not self._stopping:
            sent = time.perf_counter()
            try:
                status, headers, _ = self.conn.request("POST", "/models/demo/predict", PREDICT, b.CLIENT_TOKEN)
            except ConnectionError:  # an idle keep-alive connection closed by the server between flips
                self.conn.close()
                if time.perf_counter() > deadline:
                    raise
                continue
            answered = time.perf_counter()
            self.requests += 1
            route = headers.get("x-oversight-route")
            kill_at = self.sent_at
            if route in SERVED and status == 200:
                self.served.set()
            elif route == REFUSED and status == 202:
                if kill_at is not None and answered > kill_at:
                    return {"latency": answered - kill_at, "answer_ms": (answered - sent) * 1000}
                if not self.served.is_set() or kill_at is None:
                    pass  # still lowering back to 0, or armed before the level came down: keep probing
                else:
                    raise RuntimeError(f"{self.label}: refused before the kill was sent")
            else:
                raise RuntimeError(f"{self.label}: unexpected answer {status} route {route!r}")
            if answered > deadline:
                raise TimeoutError(f"{self.label}: no refusal within 10 s of arming")
            time.sleep(self.pause)
        raise RuntimeError("stopped")


# helpers ----------------------------------------------------------------------------
def start_redis(directory: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("error: redis-server is not installed (apt-get install -y redis-server)")
    port = b.free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(directory), "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    b.wait_port(port, proc)
    return proc, port


def admin(conn: Conn, method: str, path: str, body: dict) -> tuple[int, dict]:
    status, _, raw = conn.request(method, path, json.dumps(body), b.OPERATOR_TOKEN)
    return status, json.loads(raw)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the highest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary(values_ms: list[float]) -> str:
    return f"p50 {pct(values_ms, 50):7.2f}   p99 {pct(values_ms, 99):7.2f}   max {max(values_ms):7.2f}"


# part 1 -----------------------------------------------------------------------------
def kill_latency(args: argparse.Namespace) -> dict:
    pause = args.interval_ms / 1000
    with b.tempdir() as tmp:
        redis_proc, redis_port = start_redis(tmp)
        store = f"redis://127.0.0.1:{redis_port}/0"
        up_port = b.free_port()
        upstream = b.demo_model(up_port)
        replicas: list[subprocess.Popen] = []
        probers: list[Prober] = []
        try:
            ports = []
            for i in range(args.replicas):
                d = tmp / f"replica{i}"
                d.mkdir()
                port = b.free_port()
                config = b.write_config(d, up_port, port, store=store,
                                        policy_overrides="oversight: {two_person_lowering: false}\n")
                replicas.append(b.gateway(config, port, log=d / "gateway.log"))
                ports.append(port)
            time.sleep(1.0)  # let start-up work settle (each replica registered itself with Redis before listening)
            probers = [Prober(f"r{i}", port, pause) for i, port in enumerate(ports)]
            for p in probers:
                p.start()
            cpu0 = [b.cpu_seconds(r.pid) for r in replicas] + [b.cpu_seconds(redis_proc.pid), b.cpu_seconds(upstream.pid)]
            self_cpu0, wall0 = time.process_time(), time.perf_counter()
            rows: list[dict] = []
            total = args.warmup + args.flips
            for flip in range(total):
                for p in probers:
                    p.arm()
                for p in probers:
                    if not p.served.wait(10):
                        raise RuntimeError(f"{p.label} did not answer from the model within 10 s (flip {flip})")
                time.sleep(random.uniform(0.005, 0.015))  # the kill lands at a random point of the probe cycle
                target = flip % len(ports)
                conn = Conn(ports[target])
                conn.connect()  # before the clock starts
                sent = time.perf_counter()
                for p in probers:
                    p.sent_at = sent
                status, answer = admin(conn, "POST", "/admin/kill", {"reason": f"bench flip {flip}"})
                answered = time.perf_counter()
                if status != 200:
                    raise RuntimeError(f"kill answered {status}: {answer}")
                per_replica = []
                for p in probers:
                    result = p.results.get(timeout=15)
                    if isinstance(result, Exception):
                        raise result
                    per_replica.append(result)
                status, lowered = admin(conn, "PUT", "/admin/oversight/global", {"level": 0, "reason": f"bench flip {flip} done"})
                conn.close()
                if status != 200 or lowered.get("status") != "applied":
                    raise RuntimeError(f"lowering answered {status}: {lowered}")
                if flip >= args.warmup:
                    rows.append({
                        "target": target,
                        "kill_call_ms": (answered - sent) * 1000,
                        "applied_by": answer["applied_by"], "replicas": answer["replicas"],
                        "unconfirmed": answer.get("unconfirmed", []),
                        "latency_ms": [r["latency"] * 1000 for r in per_replica],
                        "refusal_answer_ms": [r["answer_ms"] for r in per_replica],
                    })
            wall = time.perf_counter() - wall0
            cpu = [b.cpu_seconds(r.pid) for r in replicas] + [b.cpu_seconds(redis_proc.pid), b.cpu_seconds(upstream.pid)]
            self_cpu = time.process_time() - self_cpu0
            requests = sum(p.requests for p in probers)
        finally:
            for p in probers:
                p.shutdown()
            for proc in replicas:
                b.stop(proc)
            b.stop(upstream)
            b.stop(redis_proc)

    every = [max(r["latency_ms"]) for r in rows]
    receiving = [r["latency_ms"][r["target"]] for r in rows]
    others = [v for r in rows for i, v in enumerate(r["latency_ms"]) if i != r["target"]]
    kill_calls = [r["kill_call_ms"] for r in rows]
    refusal_answer = [v for r in rows for v in r["refusal_answer_ms"]]
    confirmations: dict[str, int] = {}
    for r in rows:
        key = f"{r['applied_by']}/{r['replicas']}"
        confirmations[key] = confirmations.get(key, 0) + 1
    cpu_pct = [(after - before) / wall * 100 for before, after in zip(cpu0, cpu)]

    print(f"kill latency: {args.replicas} replicas (python -m gateway serve) on one redis-server, {args.flips} flips "
          f"(+{args.warmup} warm-up flips not counted), kill sent to the replicas in turn")
    print(f"probing: one thread per replica, keep-alive raw HTTP/1.1, POST /models/demo/predict back to back with a "
          f"{args.interval_ms:g} ms pause after each answer; a latency includes up to one pause plus one request")
    print(f"percentiles are nearest-rank over {len(rows)} flips (p99 of fewer than 100 values is the highest one); "
          f"times in ms from the moment the kill was sent")
    print(f"  first refusal on EVERY replica (max of {args.replicas})    {summary(every)}")
    print(f"  first refusal on the replica that got it     {summary(receiving)}")
    print(f"  first refusal on the other replicas          {summary(others)}")
    print(f"  POST /admin/kill answered                    {summary(kill_calls)}")
    print(f"  (one refused answer itself, level 4 -> 202   {summary(refusal_answer)})")
    print("  kill answers' applied_by/replicas: " + ", ".join(f"{k} in {n} flips" for k, n in sorted(confirmations.items()))
          + (f"; unconfirmed in {sum(1 for r in rows if r['unconfirmed'])} flips" if any(r["unconfirmed"] for r in rows) else ""))
    target_met = pct(every, 99) <= args.target_ms
    print(f"  target p99 <= {args.target_ms:g} ms (every replica): {'met' if target_met else 'NOT met'} ({pct(every, 99):.2f} ms)")
    print(f"  CPU during the flips ({wall:.1f} s, {requests} probe requests, 2 cores = 200 %): replicas "
          + ", ".join(f"{c:.0f} %" for c in cpu_pct[:3]) + f", redis {cpu_pct[3]:.0f} %, demo model {cpu_pct[4]:.0f} %, "
          f"this script {self_cpu / wall * 100:.0f} %")
    return {"every_ms": every, "receiving_ms": receiving, "others_ms": others, "kill_call_ms": kill_calls,
            "confirmations": confirmations, "cpu_percent": cpu_pct, "target_met": target_met}


# part 2 -----------------------------------------------------------------------------
def kill_under_load(args: argparse.Namespace) -> dict:
    """200 req/s of 1-second answers over 3 replicas; a kill mid-load; no model answer delivered after it answered."""
    import asyncio

    with b.tempdir() as tmp:
        redis_proc, redis_port = start_redis(tmp)
        store = f"redis://127.0.0.1:{redis_port}/0"
        up_port = b.free_port()
        upstream = b.demo_model(up_port, None, "--latency-ms", "1000")
        replicas, ports = [], []
        try:
            for i in range(3):
                d = tmp / f"loaded{i}"
                d.mkdir()
                port = b.free_port()
                config = b.write_config(d, up_port, port, store=store, policy_overrides="defaults: {sample_rate: {0: 0.0}}\n")
                replicas.append(b.gateway(config, port, log=d / "gateway.log"))
                ports.append(port)
            time.sleep(1.0)
            results, answered = asyncio.run(_load_and_kill(ports, args.load_rate, args.load_seconds))
        finally:
            for proc in replicas:
                b.stop(proc)
            b.stop(upstream)
            b.stop(redis_proc)
    late_model_answers = {i: 0 for i in range(3)}
    after = {i: 0 for i in range(3)}
    for replica, received, status, route, level in results:
        if received > answered:
            after[replica] += 1
            if status == 200 and route != "human":
                late_model_answers[replica] += 1
    total = len(results)
    print(f"kill under load: 3 replicas on one redis-server, demo model answering in 1 s, {args.load_rate:g} req/s for "
          f"{args.load_seconds:g} s ({total} requests), POST /admin/kill after {args.load_seconds / 2:g} s")
    for i in range(3):
        print(f"  replica {i}: {after[i]} answers received after the kill answered, of which model answers: "
              f"{late_model_answers[i]}")
    zero = sum(late_model_answers.values()) == 0
    print(f"  target: zero model answers delivered after the call returned, on every replica: {'met' if zero else 'NOT met'}")
    return {"requests": total, "after": after, "late_model_answers": late_model_answers, "target_met": zero}


async def _load_and_kill(ports: list[int], rate: float, seconds: float) -> tuple[list[tuple], float]:
    import asyncio

    import httpx

    results: list[tuple] = []
    answered = float("inf")
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(i: int) -> None:
            replica = i % len(ports)
            r = await client.post(f"http://127.0.0.1:{ports[replica]}/models/demo/predict",
                                  content=PREDICT.replace("a-17", f"l-{i}"),
                                  headers={"authorization": f"Bearer {b.CLIENT_TOKEN}", "content-type": "application/json",
                                           "prefer": "respond-async"})
            results.append((replica, time.perf_counter(), r.status_code, r.headers.get("x-oversight-route"),
                            r.headers.get("x-oversight-level")))

        async def kill() -> float:
            await asyncio.sleep(seconds / 2)
            r = await client.post(f"http://127.0.0.1:{ports[0]}/admin/kill", json={"reason": "bench: kill under load"},
                                  headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"})
            done = time.perf_counter()
            if r.status_code != 200 or r.json().get("applied_by") != 3:
                raise RuntimeError(f"kill answered {r.status_code}: {r.text}")
            return done

        tasks = []
        killer = asyncio.create_task(kill())
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        answered = await killer
        await asyncio.gather(*tasks)
    return results, answered


# part 3 -----------------------------------------------------------------------------
def metric_routes(port: int) -> dict[str, float]:
    """gateway_requests_total by route, from /metrics."""
    import re

    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"}, timeout=10).text
    routes: dict[str, float] = {}
    for match in re.finditer(r'^gateway_requests_total\{([^}]*)\}\s+([\d.e+]+)', text, re.M):
        route = re.search(r'route="([^"]*)"', match.group(1))
        if route:
            routes[route.group(1)] = routes.get(route.group(1), 0) + float(match.group(2))
    return routes


def sampling_cost(args: argparse.Namespace) -> dict:
    names = ("sampling on (default 2 %)", "sampling off (rate 0.0)")
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.demo_model(up_port, "1")
        gateways: list[subprocess.Popen] = []
        ports: list[int] = []
        try:
            for i, overrides in enumerate(("", "defaults: {sample_rate: {0: 0.0}}\n")):
                d = tmp / f"gw{i}"
                d.mkdir()
                port = b.free_port()
                config = b.write_config(d, up_port, port, policy_overrides=overrides)
                gateways.append(b.gateway(config, port, "0", log=d / "gateway.log"))
                ports.append(port)
            urls = [f"http://127.0.0.1:{port}/models/demo/predict" for port in ports]
            run = lambda url, s=args.seconds: b.wrk(url, connections=32, seconds=s, body=PREDICT, token=b.CLIENT_TOKEN, cpus="1")  # noqa: E731
            for url in urls:
                run(url, 2)  # warm up
            rows: list[list[dict]] = [[], []]
            cpu_us: list[list[float]] = [[], []]
            busy: list[list[float]] = [[], []]
            pairs: list[float] = []
            for r in range(args.rounds):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    before, wall = b.cpu_seconds(gateways[i].pid), time.perf_counter()
                    result = run(urls[i])
                    used = b.cpu_seconds(gateways[i].pid) - before
                    cpu_us[i].append(used / max(1, result["requests"]) * 1e6)
                    busy[i].append(used / (time.perf_counter() - wall) * 100)
                    rows[i].append(result)
                pairs.append(rows[0][-1]["rps"] / rows[1][-1]["rps"] if rows[1][-1]["rps"] else float("nan"))
            routes = [metric_routes(port) for port in ports]
        finally:
            for proc in gateways:
                b.stop(proc)
            b.stop(upstream)

    med = [{k: b.median([r[k] for r in runs]) for k in ("rps", "p50", "p99", "errors")} for runs in rows]
    ratio = b.median(pairs)
    cpu = [b.median(c) for c in cpu_us]
    print()
    print(f"sampling cost at level 0: {args.rounds} rounds of {args.seconds:g}s, each round runs both back to back (order "
          f"flipped each round); wrk -t1 -c32 and the demo model on cpu1, each gateway pinned to cpu0 (one driven at a "
          f"time); medians over the rounds")
    print(f"{'':27}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'CPU us/req':>11}{'cpu0 busy':>10}  req/s per round")
    for i, name in enumerate(names):
        m = med[i]
        print(f"{name:27}{m['rps']:8.0f}{m['p50']:8.3f}{m['p99']:8.3f}{m['errors']:7.0f}{cpu[i]:11.0f}{b.median(busy[i]):9.0f} %  "
              + " ".join(f"{r['rps']:.0f}" for r in rows[i]))
    for i, name in enumerate(names):
        total = sum(routes[i].values()) or 1
        print(f"  {name}: routes " + ", ".join(f"{k} {v:.0f} ({v / total * 100:.2f} %)" for k, v in sorted(routes[i].items())))
    within = abs(ratio - 1) <= 0.05
    print("  per-round throughput ratios (on/off): " + " ".join(f"{x:.3f}" for x in pairs))
    print(f"throughput sampling on / sampling off: median of the per-round ratios {ratio:.3f}, ratio of the medians "
          f"{med[0]['rps'] / med[1]['rps']:.3f} (target within 5 %: {'met' if within else 'NOT met'}); "
          f"gateway CPU per request on/off {cpu[0] / cpu[1]:.3f}")
    return {"medians": med, "ratio": ratio, "pairs": pairs, "cpu_us": cpu, "routes": routes, "target_met": within}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="flips run first and not counted")
    parser.add_argument("--interval-ms", type=float, default=1.0, help="pause between a probe's answer and its next request")
    parser.add_argument("--target-ms", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=5, help="part 1: gateway replicas on the one redis-server")
    parser.add_argument("--load-rate", type=float, default=200.0, help="part 2: requests per second")
    parser.add_argument("--load-seconds", type=float, default=6.0, help="part 2: seconds of load (0: skip part 2)")
    parser.add_argument("--rounds", type=int, default=6, help="part 3 rounds (0: skip part 3)")
    parser.add_argument("--seconds", type=float, default=4.0, help="part 3: seconds per wrk run")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args()
    if args.flips < 1:
        parser.error("--flips must be at least 1")
    print(f"machine: {os.cpu_count()} CPUs, {b.interpreter()}, load generator: "
          f"{'wrk' if shutil.which('wrk') else 'scripts/loadgen.py'}; load average before: {_load()}")
    out = {"kill": kill_latency(args)}
    if args.load_seconds > 0:
        out["kill_under_load"] = kill_under_load(args)
    if args.rounds > 0:
        out["sampling"] = sampling_cost(args)
    print(f"load average after: {_load()} (anything else running on the machine shows here and in the numbers)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
