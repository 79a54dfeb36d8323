#!/usr/bin/env python3
"""Proxy benchmark: the demo model direct vs through the gateway, side by side in one run.

Starts the demo model and the gateway (one worker) as separate processes, drives load
from a third (wrk when installed, else scripts/loadgen.py), alternates direct and
through-gateway runs, and prints medians: req/s at 32 connections, p50/p99 at 1 and 32
connections, the gateway's CPU per request, the first-byte delay it adds to a stream,
and its resident memory over 100,000 requests.

    python scripts/bench_proxy.py                # all of it (about 3 minutes)
    python scripts/bench_proxy.py --rounds 1 --memory-requests 0
    python scripts/bench_proxy.py --level 1      # all decisions recorded
    python scripts/bench_proxy.py --against /tmp/gw-main   # this tree vs another checkout, interleaved
    python scripts/bench_proxy.py --tracing      # this tree's gateway exports OTLP traces to a local sink
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

PREDICT = '{"applicant":{"id":"a-17","group":"A","income":52000}}'
CHAT = '{"model":"demo","messages":[{"role":"user","content":"hello"}],"stream":true}'


def set_level(port: int, level: int) -> None:
    import httpx

    if level == 0:
        return
    r = httpx.put(f"http://127.0.0.1:{port}/admin/oversight/global", json={"level": level, "reason": "benchmark"},
                  headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"}, timeout=10)
    r.raise_for_status()


def first_byte_ms(port: int, path: str, token: str | None) -> float:
    """Time from sending a streaming request to the first event's bytes."""
    body = CHAT.encode()
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    request = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{auth}"
               f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        s.sendall(request)
        seen = b""
        while b"data:" not in seen:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("stream ended before its first event")
            seen += chunk
        return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--level", type=int, default=0, help="global oversight level during the run")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--stream-samples", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument("--against", type=Path, help="another checkout of the gateway: compare its CPU per request "
                                                     "with this tree's, in interleaved rounds, and stop there")
    parser.add_argument("--tracing", action="store_true", help="this tree's gateway traces every request "
                        "(OTEL_TRACES_EXPORTER=otlp) to a local OTLP/HTTP sink; with --against: the other does not")
    args = parser.parse_args()
    sink = b.OtlpSink() if args.tracing else None
    try:
        return against(args, sink) if args.against else run_all(args, sink)
    finally:
        if sink is not None:
            print(f"tracing on: the sink received {sink.posts} OTLP exports, {sink.bytes / 1e6:.1f} MB")
            sink.close()


def run_all(args: argparse.Namespace, sink) -> int:

    with b.tempdir() as tmp:
        up_port, gw_port = b.free_port(), b.free_port()
        config = b.write_config(tmp, up_port, gw_port)
        upstream = b.demo_model(up_port, "1", "--stream-delay-ms", "5")
        gateway = b.gateway(config, gw_port, "0", log=tmp / "gateway.log", env=sink.env if sink else None)
        try:
            set_level(gw_port, args.level)
            direct_url = f"http://127.0.0.1:{up_port}/predict"
            gw_url = f"http://127.0.0.1:{gw_port}/models/demo/predict"
            run = lambda url, c, s=args.seconds: b.wrk(url, connections=c, seconds=s, body=PREDICT, token=b.CLIENT_TOKEN, cpus="1")  # noqa: E731
            run(direct_url, 32, 2)  # warm both paths
            run(gw_url, 32, 2)
            rows: dict[str, list[dict]] = {"direct c32": [], "gateway c32": [], "direct c1": [], "gateway c1": []}
            cpu_per_request: list[float] = []
            for _ in range(args.rounds):
                rows["direct c32"].append(run(direct_url, 32))
                cpu0 = b.cpu_seconds(gateway.pid)
                result = run(gw_url, 32)
                cpu_per_request.append((b.cpu_seconds(gateway.pid) - cpu0) / max(1, result["requests"]) * 1e6)
                rows["gateway c32"].append(result)
                rows["direct c1"].append(run(direct_url, 1))
                rows["gateway c1"].append(run(gw_url, 1))

            direct_fb, gw_fb = [], []
            for _ in range(args.stream_samples):
                direct_fb.append(first_byte_ms(up_port, "/v1/chat/completions", None))
                gw_fb.append(first_byte_ms(gw_port, "/v1/chat/completions", b.CLIENT_TOKEN))

            memory: list[tuple[int, float]] = []
            total = 0
            while args.memory_requests and total < args.memory_requests:
                total += run(gw_url, 32, 10)["requests"]
                memory.append((total, b.rss_mb(gateway.pid)))
        finally:
            b.stop(gateway)
            b.stop(upstream)

    med = {name: {k: b.median([r[k] for r in runs]) for k in ("rps", "p50", "p99", "errors")} for name, runs in rows.items()}
    print(f"proxy benchmark: level {args.level}, tracing {'on' if sink else 'off'}, {args.rounds} rounds of {args.seconds:g}s, wrk -t1, gateway pinned to cpu0, "
          f"demo model and load on cpu1; medians")
    print(f"{'':14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, m in med.items():
        print(f"{name:14}{m['rps']:10.0f}{m['p50']:10.3f}{m['p99']:10.3f}{m['errors']:8.0f}")
    added_p50 = med["gateway c1"]["p50"] - med["direct c1"]["p50"]
    added_p99 = med["gateway c1"]["p99"] - med["direct c1"]["p99"]
    ratio = med["gateway c32"]["rps"] / med["direct c32"]["rps"]
    fb_added = b.median(gw_fb) - b.median(direct_fb)
    print(f"gateway/direct throughput at 32 connections: {ratio:.2f}")
    print(f"added latency at 1 connection: p50 {added_p50:+.3f} ms, p99 {added_p99:+.3f} ms")
    print(f"gateway CPU per request at 32 connections: {b.median(cpu_per_request):.0f} us")
    print(f"streaming first byte: direct p50 {b.median(direct_fb):.3f} ms, gateway p50 {b.median(gw_fb):.3f} ms, added {fb_added:+.3f} ms")
    if memory:
        first, last = memory[0][1], memory[-1][1]
        low, high = min(m for _, m in memory), max(m for _, m in memory)
        print(f"gateway RSS: {first:.1f} MB after {memory[0][0]} requests, {last:.1f} MB after {memory[-1][0]}; "
              f"range {low:.1f}-{high:.1f} MB ({(high / low - 1) * 100:.1f} % spread)")
    if args.json:
        print(json.dumps({"medians": med, "added_p50_ms": added_p50, "added_p99_ms": added_p99, "throughput_ratio": ratio,
                          "cpu_us_per_request": b.median(cpu_per_request), "first_byte_added_ms": fb_added, "memory": memory}))
    return 0


def against(args: argparse.Namespace, sink=None) -> int:
    """This tree and another checkout in front of one demo model, interleaved rounds, CPU per request."""
    trees = {"this tree": b.ROOT, "against": args.against.resolve()}
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.demo_model(up_port, "1")
        gateways, ports = {}, {}
        try:
            for name, tree in trees.items():
                ports[name] = b.free_port()
                (tmp / name.replace(" ", "-")).mkdir()
                config = b.write_config(tmp / name.replace(" ", "-"), up_port, ports[name])
                gateways[name] = b.gateway(config, ports[name], "0", log=tmp / f"{name.replace(' ', '-')}.log", tree=tree,
                                           env=sink.env if sink and name == "this tree" else None)
                set_level(ports[name], args.level)
            cpu: dict[str, list[float]] = {name: [] for name in trees}
            rps: dict[str, list[float]] = {name: [] for name in trees}
            for name in trees:  # warm both
                b.wrk(f"http://127.0.0.1:{ports[name]}/models/demo/predict", connections=32, seconds=2, body=PREDICT,
                      token=b.CLIENT_TOKEN, cpus="1")
            for _ in range(args.rounds):
                for name in trees:
                    cpu0 = b.cpu_seconds(gateways[name].pid)
                    result = b.wrk(f"http://127.0.0.1:{ports[name]}/models/demo/predict", connections=32,
                                   seconds=args.seconds, body=PREDICT, token=b.CLIENT_TOKEN, cpus="1")
                    cpu[name].append((b.cpu_seconds(gateways[name].pid) - cpu0) / max(1, result["requests"]) * 1e6)
                    rps[name].append(result["rps"])
        finally:
            for proc in gateways.values():
                b.stop(proc)
            b.stop(upstream)
    print(f"proxy benchmark, side by side: level {args.level}, tracing {'on in this tree' if sink else 'off'}, {args.rounds} interleaved rounds of {args.seconds:g}s, "
          f"each gateway pinned to cpu0 in turn, demo model and wrk on cpu1; medians")
    for name, tree in trees.items():
        print(f"{name:10} {str(tree):40} {b.median(rps[name]):9.0f} req/s  {b.median(cpu[name]):6.1f} us CPU/request  "
              f"(rounds: {', '.join(f'{v:.0f}' for v in cpu[name])})")
    ratio = b.median(cpu["this tree"]) / b.median(cpu["against"])
    print(f"CPU per request, this tree / against: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
