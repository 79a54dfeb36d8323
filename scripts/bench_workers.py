#!/usr/bin/env python3
"""Workers benchmark: `gateway serve` (one process) vs `gateway serve --workers 2`, side by side in one run.

Both gateways run at once in front of one fast upstream (nginx, one worker process,
answering every request with a fixed JSON body: a few microseconds, so the gateway is
what is measured) and are driven in turn, in interleaved rounds, by wrk at 32 keep-alive
connections. Nothing is pinned: on this 2-core machine the gateway's workers share the
cores with wrk and nginx, as they would in production with their neighbours.

Per round and configuration: req/s, p50 and p99; CPU per request of every gateway
process (the supervisor and its workers, from /proc), of nginx and of wrk itself (its
rusage); how busy the machine's cores were (/proc/stat, steal included); and how the
workers split the work. The load generator's ceiling is stated: wrk is one thread, so it
cannot drive more than 1 / (its CPU per request) req/s, and with two workers on two cores
every microsecond wrk and nginx spend is taken from the gateway. Part 2 times
`POST /admin/kill` on the two workers (the call answers once both confirmed) over a few
flips.

    python scripts/bench_workers.py                   # 5 rounds of 5 s each (about a minute and a half)
    python scripts/bench_workers.py --rounds 3 --seconds 3 --flips 10
    sudo python scripts/bench_workers.py --nice -10   # on a machine other jobs share: this run's processes first
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

PREDICT = '{"applicant":{"id":"a-17","group":"A","income":52000}}'
ANSWER = '{"decision":"approve","confidence":0.91,"model":"demo-v1"}'
POLICY = "oversight: {two_person_lowering: false}\n"  # part 2 lowers the level again after each kill

NGINX_SERVER = """\
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{answer}';
        }}
    }}"""


def nginx(directory: Path, port: int) -> subprocess.Popen:
    return b.nginx_serving(directory, port, NGINX_SERVER.format(port=port, answer=ANSWER))


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(found)


def machine() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal, sum(fields)


def wrk_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(port: int, pids: list[int], upstream_pids: list[int], seconds: float) -> dict:
    """One wrk run at 32 connections against `port`: rates, and CPU per request of each party."""
    cpu0 = {pid: b.cpu_seconds(pid) for pid in pids}
    up0 = sum(b.cpu_seconds(pid) for pid in upstream_pids)
    wrk0, m0 = wrk_children_cpu(), machine()
    result = b.wrk(f"http://127.0.0.1:{port}/models/demo/predict", connections=32, seconds=seconds, body=PREDICT,
                   token=b.CLIENT_TOKEN)
    m1, wrk1 = machine(), wrk_children_cpu()
    per_pid = {pid: b.cpu_seconds(pid) - cpu0[pid] for pid in pids}
    n = max(1, result["requests"])
    cores = os.cpu_count() or 1
    return {
        **result,
        "gateway_us": sum(per_pid.values()) / n * 1e6,
        "split": [v / max(1e-9, sum(per_pid.values())) for v in per_pid.values()],
        "upstream_us": (sum(b.cpu_seconds(pid) for pid in upstream_pids) - up0) / n * 1e6,
        "wrk_us": (wrk1 - wrk0) / n * 1e6,
        "wrk_core": (wrk1 - wrk0) / seconds,
        "busy": (m1[0] - m0[0]) / max(1, m1[2] - m0[2]) * cores,
        "steal": (m1[1] - m0[1]) / max(1, m1[2] - m0[2]) * cores,
        # cores busy with something else than this benchmark (other jobs on a shared machine)
        "others": max(0.0, (m1[0] - m0[0]) / max(1, m1[2] - m0[2]) * cores
                      - (sum(per_pid.values()) + (wrk1 - wrk0)) / seconds
                      - (sum(b.cpu_seconds(pid) for pid in upstream_pids) - up0) / seconds),
    }


def wait_for_replicas(port: int, count: int, timeout: float = 60.0) -> None:
    """Until `count` different replicas have answered (each new connection goes to whichever worker accepts it)."""
    import httpx

    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {count} workers answered within {timeout:g}s")
        with httpx.Client(timeout=10) as client:
            r = client.get(f"http://127.0.0.1:{port}/admin/oversight", headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"})
            if r.status_code == 200:
                seen.add(r.json()["replica"])
        time.sleep(0.05)


def kill_flips(port: int, flips: int) -> tuple[list[float], list[str]]:
    import httpx

    headers = {"authorization": f"Bearer {b.OPERATOR_TOKEN}"}
    took, confirmed = [], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
        for i in range(flips):
            started = time.perf_counter()
            r = client.post("/admin/kill", json={"reason": f"flip {i}", "model": "demo"})
            took.append((time.perf_counter() - started) * 1000)
            r.raise_for_status()
            confirmed.append(f"{r.json()['applied_by']}/{r.json()['replicas']}")
            client.put("/admin/oversight/models/demo", json={"level": 0, "reason": "flip back"}).raise_for_status()
            time.sleep(0.05)
    return took, confirmed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--nice", type=int, default=0, help="niceness of every process of the run (negative: root only), "
                                                            "so other jobs on a shared machine disturb it less")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by the gateways, nginx and wrk started below
    load_before = os.getloadavg()

    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = nginx(tmp / "nginx", up_port)
        upstream_pids = [upstream.pid, *children(upstream.pid)]
        procs, ports = {}, {}
        try:
            for name, workers in (("1 worker", 1), ("--workers 2", 2)):
                folder = tmp / ("one" if workers == 1 else "two")
                folder.mkdir()
                ports[name] = b.free_port()
                config = b.write_config(folder, up_port, ports[name], policy_overrides=POLICY)
                procs[name] = b.start([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                                       "--port", str(ports[name]), "--workers", str(workers)], ports[name],
                                      log=folder / "gateway.log", cwd=b.ROOT, env={"PYTHONPATH": str(b.ROOT)})
            wait_for_replicas(ports["--workers 2"], 2)  # the port listens at once; the workers start one after the other
            pids = {name: [proc.pid, *children(proc.pid)] for name, proc in procs.items()}
            assert len(pids["--workers 2"]) == 3, f"expected a supervisor and 2 workers, found {pids['--workers 2']}"
            direct = b.wrk(f"http://127.0.0.1:{up_port}/predict", connections=32, seconds=2, body=PREDICT,
                           token=b.CLIENT_TOKEN)
            for name in procs:  # warm both
                measure(ports[name], pids[name], upstream_pids, 2)
            rows: dict[str, list[dict]] = {name: [] for name in procs}
            direct_rows = []
            for _ in range(args.rounds):
                for name in procs:
                    rows[name].append(measure(ports[name], pids[name], upstream_pids, args.seconds))
                wrk0 = wrk_children_cpu()
                direct = b.wrk(f"http://127.0.0.1:{up_port}/predict", connections=32, seconds=2, body=PREDICT,
                               token=b.CLIENT_TOKEN)
                direct_rows.append({**direct, "wrk_us": (wrk_children_cpu() - wrk0) / max(1, direct["requests"]) * 1e6})
            took, confirmed = kill_flips(ports["--workers 2"], args.flips) if args.flips else ([], [])
            one_took, _ = kill_flips(ports["1 worker"], args.flips) if args.flips else ([], [])
        finally:
            for proc in procs.values():
                b.stop(proc)
            b.stop(upstream)

    med = {name: {k: b.median([r[k] for r in runs]) for k in runs[0] if k != "split"} for name, runs in rows.items()}
    one, two = med["1 worker"], med["--workers 2"]
    print(f"workers benchmark: {args.rounds} interleaved rounds of {args.seconds:g}s, wrk -t1 -c32, upstream nginx "
          f"(1 process, fixed answer), level 0, nothing pinned, nice {args.nice}, {os.cpu_count()} cores; medians; "
          f"load average before "
          f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"{'':13}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'gw us/req':>10}{'nginx us':>9}{'wrk us':>8}"
          f"{'wrk core':>9}{'busy cores':>11}{'others':>7}{'steal':>6}")
    for name, m in med.items():
        print(f"{name:13}{m['rps']:8.0f}{m['p50']:8.2f}{m['p99']:8.2f}{m['errors']:7.0f}{m['gateway_us']:10.1f}"
              f"{m['upstream_us']:9.1f}{m['wrk_us']:8.1f}{m['wrk_core']:9.2f}{m['busy']:11.2f}{m['others']:7.2f}"
              f"{m['steal']:6.2f}")
    for name, runs in rows.items():
        rates = ", ".join(f"{r['rps']:.0f}" for r in runs)
        costs = ", ".join(f"{r['gateway_us']:.0f}" for r in runs)
        print(f"  {name:11} rounds, req/s: {rates};  gateway us/request: {costs}")
    splits = [r["split"] for r in rows["--workers 2"]]
    shares = "; ".join(" / ".join(f"{x * 100:.0f}%" for x in split) for split in splits)
    print(f"  --workers 2 CPU split, supervisor / worker / worker: {shares}")
    pairs = list(zip(rows["1 worker"], rows["--workers 2"]))
    rps_ratio = b.median([t["rps"] / o["rps"] for o, t in pairs])
    cpu_ratio = b.median([t["gateway_us"] / o["gateway_us"] for o, t in pairs])
    print(f"throughput, 2 workers / 1: {two['rps'] / one['rps']:.2f}x (median of the rounds' ratios {rps_ratio:.2f}x)")
    print(f"gateway CPU per request, 2 workers / 1: {two['gateway_us'] / one['gateway_us']:.3f} "
          f"({(two['gateway_us'] / one['gateway_us'] - 1) * 100:+.1f} %; median of the rounds' ratios {cpu_ratio:.3f})")
    quiet = [(o, t) for o, t in pairs if o["others"] < 0.15 and t["others"] < 0.15]
    if quiet:
        q_cpu = b.median([t["gateway_us"] / o["gateway_us"] for o, t in quiet])
        q_rps = b.median([t["rps"] / o["rps"] for o, t in quiet])
        print(f"  rounds where other jobs took < 0.15 core in both runs ({len(quiet)} of {len(pairs)}): CPU per request "
              f"ratio {q_cpu:.3f}, throughput ratio {q_rps:.2f}x")
    else:
        print("  no round had both runs with other jobs below 0.15 core: the machine was shared throughout")
    direct_rps = b.median([r["rps"] for r in direct_rows])
    direct_wrk = b.median([r["wrk_us"] for r in direct_rows])
    print(f"load generator: wrk (one thread) costs {two['wrk_us']:.1f} us per gateway request, so alone on a core it "
          f"could drive at most {1e6 / two['wrk_us']:.0f} req/s; wrk straight at nginx: {direct_rps:.0f} req/s "
          f"({direct_wrk:.1f} us wrk CPU per request)")
    budget = (os.cpu_count() or 1) - two["wrk_core"] - two["upstream_us"] * two["rps"] / 1e6
    print(f"with 2 workers the machine was {two['busy']:.2f} of {os.cpu_count()} cores busy; wrk took {two['wrk_core']:.2f} "
          f"and nginx {two['upstream_us'] * two['rps'] / 1e6:.2f} core, leaving the gateway {budget:.2f} cores: its ceiling "
          f"here is {budget / two['gateway_us'] * 1e6:.0f} req/s at its CPU per request (1 worker: one core, "
          f"{1e6 / one['gateway_us']:.0f} req/s)")
    if took:
        print(f"kill switch, POST /admin/kill until confirmed ({args.flips} flips): --workers 2 p50 {b.median(took):.1f} ms, "
              f"max {max(took):.1f} ms, confirmations {', '.join(sorted(set(confirmed)))}; 1 worker p50 "
              f"{b.median(one_took):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
