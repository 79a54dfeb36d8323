#!/usr/bin/env python3
"""Proxy benchmark: the gateway next to nginx and a naive proxy, side by side in one run.

The default run is the comparison: a raw uvloop/httptools upstream answering a 460-byte chat
completion (scripts/rawupstream.py), and in front of it, in turn, nothing (direct), nginx
`proxy_pass` with keep-alive (installed with apt-get when missing), a naive Starlette +
aiohttp proxy (scripts/naiveproxy.py) and the gateway at levels 0 and 1 (one worker each).
Each proxy is pinned to cpu0, wrk and the upstream to cpu1; rounds interleave the proxies;
it prints medians of req/s (upstream answering at once), CPU per request (from /proc, the
proxy's whole process tree), p50 with the upstream taking 20 ms, and ratios.

    python scripts/bench_proxy.py                  # the comparison (about 4 minutes)
    python scripts/bench_proxy.py --rounds 1 --seconds 5
    python scripts/bench_proxy.py --before /tmp/gw-main   # and another checkout's gateway, in the same rounds
    python scripts/bench_proxy.py --details        # the gateway alone: c1 latency, stream first byte, memory
    python scripts/bench_proxy.py --details --level 1 --memory-requests 1000000
    python scripts/bench_proxy.py --against /tmp/gw-main   # this tree vs another checkout, interleaved
    python scripts/bench_proxy.py --details --tracing      # the gateway exports OTLP traces to a local sink
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
COMPLETION = '{"model":"demo","messages":[{"role":"user","content":"Should applicant a-17 get the loan?"}]}'
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
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    parser.add_argument("--before", type=Path, help="the comparison: also run another checkout's gateway at levels "
                        "0 and 1, in the same interleaved rounds")
    parser.add_argument("--details", action="store_true", help="the gateway alone in front of the demo model: "
                        "latency at 1 and 32 connections, a stream's first byte, memory")
    parser.add_argument("--level", type=int, default=0, help="global oversight level during the run")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--stream-samples", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument("--against", type=Path, help="another checkout of the gateway: compare its CPU per request "
                                                     "with this tree's, in interleaved rounds, and stop there")
    parser.add_argument("--stream-rounds", type=int, default=None,
                        help="with --against: interleaved streaming rounds (default: --rounds; 0: none)")
    parser.add_argument("--tracing", action="store_true", help="this tree's gateway traces every request "
                        "(OTEL_TRACES_EXPORTER=otlp) to a local OTLP/HTTP sink; with --against: the other does not")
    args = parser.parse_args()
    sink = b.OtlpSink() if args.tracing else None
    try:
        if args.against:
            return against(args, sink)
        return run_all(args, sink) if args.details else compare(args)
    finally:
        if sink is not None:
            print(f"tracing on: the sink received {sink.posts} OTLP exports, {sink.bytes / 1e6:.1f} MB")
            sink.close()


def compare(args: argparse.Namespace) -> int:
    """Every proxy in front of one raw upstream, interleaved rounds, the issue's table."""
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.raw_upstream(up_port, "1")
        procs: dict[str, object] = {}
        urls = {"direct (no proxy)": f"http://127.0.0.1:{up_port}/v1/chat/completions"}
        try:
            port = b.free_port()
            procs["nginx proxy_pass, keep-alive"] = b.nginx(tmp / "nginx", port, up_port, "0")
            urls["nginx proxy_pass, keep-alive"] = f"http://127.0.0.1:{port}/v1/chat/completions"
            port = b.free_port()
            procs["naive Starlette + aiohttp"] = b.naive_proxy(port, up_port, "0")
            urls["naive Starlette + aiohttp"] = f"http://127.0.0.1:{port}/v1/chat/completions"
            trees = [("gateway", b.ROOT)] + ([("before", args.before.resolve())] if args.before else [])
            for label, tree in trees:
                for level in (0, 1):
                    name = f"{label}, level {level}"
                    port = b.free_port()
                    where = tmp / f"{label}-level{level}"
                    where.mkdir()
                    config = b.write_config(where, up_port, port)
                    procs[name] = b.gateway(config, port, "0", log=where / "gateway.log", tree=tree)
                    set_level(port, level)
                    urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
            run = lambda url, seconds, **kw: b.wrk(url, connections=32, seconds=seconds, body=COMPLETION,  # noqa: E731
                                                   token=b.CLIENT_TOKEN, cpus="1", **kw)
            for url in urls.values():
                run(url, 2)  # warm every path
            rps: dict[str, list[float]] = {name: [] for name in urls}
            cpu: dict[str, list[float]] = {name: [] for name in urls}
            slow_p50: dict[str, list[float]] = {name: [] for name in urls}
            errors: dict[str, int] = {name: 0 for name in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    proc = procs.get(name)
                    cpu0 = b.tree_cpu_seconds(proc.pid) if proc else 0.0
                    result = run(url, args.seconds)
                    if proc:
                        cpu[name].append((b.tree_cpu_seconds(proc.pid) - cpu0) / max(1, result["requests"]) * 1e6)
                    rps[name].append(result["rps"])
                    errors[name] += result["errors"]
                for name, url in urls.items():
                    result = run(url, max(3.0, args.seconds / 2), headers={"x-bench-delay-ms": "20"})
                    slow_p50[name].append(result["p50"])
                    errors[name] += result["errors"]
            streamed = {name: stream_cost(urls[name], procs[name]) for name in ("nginx proxy_pass, keep-alive", "gateway, level 0",
                                                                                "gateway, level 1")}
            first = {name: [] for name in ("direct (no proxy)", "nginx proxy_pass, keep-alive", "gateway, level 0")}
            for _ in range(args.stream_samples):
                for name in first:
                    port = int(urls[name].split(":")[2].split("/")[0])
                    first[name].append(first_byte_ms(port, "/v1/chat/completions", b.CLIENT_TOKEN))
        finally:
            for proc in procs.values():
                b.stop(proc)
            b.stop(upstream)
    print(f"interpreter: {b.interpreter()}")
    print(f"proxy comparison: {args.rounds} interleaved rounds of {args.seconds:g}s, 32 connections, wrk -t1; each proxy "
          f"pinned to cpu0, wrk and the raw upstream (460-byte chat completion) to cpu1; medians")
    gw0 = b.median(cpu["gateway, level 0"])
    print(f"{'proxy':32}{'req/s':>10}{'CPU/req us':>12}{'x nginx':>9}{'x level 0':>11}{'p50 @20ms':>11}{'errors':>8}")
    for name in urls:
        c = b.median(cpu[name]) if cpu[name] else float("nan")
        nginx_cpu = b.median(cpu["nginx proxy_pass, keep-alive"])
        print(f"{name:32}{b.median(rps[name]):10.0f}{c:12.1f}{c / nginx_cpu:9.1f}{c / gw0:11.2f}"
              f"{b.median(slow_p50[name]):9.2f}ms{errors[name]:8d}")
    print("rounds, CPU/req us: " + "; ".join(f"{name}: {', '.join(f'{v:.1f}' for v in values)}"
                                           for name, values in cpu.items() if values))
    level1 = b.median(cpu["gateway, level 1"]) / gw0
    throughput = b.median(rps["gateway, level 1"]) / b.median(rps["gateway, level 0"])
    print(f"level 1 / level 0: CPU per request {level1:.3f} ({(level1 - 1) * 100:+.1f} %), "
          f"throughput {throughput:.3f} ({(throughput - 1) * 100:+.1f} %)")
    print(f"gateway level 0 / naive aiohttp proxy, CPU per request: {gw0 / b.median(cpu['naive Starlette + aiohttp']):.2f}")
    if args.before:
        for level in (0, 1):
            ratio = b.median(cpu[f"gateway, level {level}"]) / b.median(cpu[f"before, level {level}"])
            print(f"level {level}, this tree / {args.before}: CPU per request {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    print(f"streaming, {STREAMS} streams of {EVENTS} events (16 at once, an event a millisecond): CPU per relayed event "
          + ", ".join(f"{name} {us:.1f} us" for name, us in streamed.items()) + "; target for the gateway <= 15 us")
    direct_fb = b.median(first["direct (no proxy)"])
    print(f"streaming first byte, p50 of {args.stream_samples}: direct {direct_fb:.3f} ms, "
          + ", ".join(f"{name} {b.median(v):.3f} ms (added {b.median(v) - direct_fb:+.3f})" for name, v in first.items()
                      if name != "direct (no proxy)") + "; target added <= 0.5 ms")
    if args.json:
        print(json.dumps({"rps": rps, "cpu_us_per_request": cpu, "p50_ms_at_20ms": slow_p50, "errors": errors,
                          "cpu_us_per_event": streamed}))
    return 0 if not any(errors.values()) else 1


STREAMS, EVENTS = 48, 1000
STREAM_BODY = '{"model":"demo","messages":[{"role":"user","content":"hello"}],"stream":true}'


def stream_cost(url: str, proc) -> float:
    """CPU of `proc` (its process tree) per SSE event relayed, over STREAMS whole streams, 16 at a time."""
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = STREAM_BODY.encode()
    request = (f"POST {parts.path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               f"authorization: Bearer {b.CLIENT_TOKEN}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
    events = [0]
    lock = threading.Lock()

    def client(count: int) -> None:
        with socket.create_connection((parts.hostname, parts.port)) as s:
            for _ in range(count):
                s.sendall(request)
                data = b""
                while not data.endswith(b"0\r\n\r\n"):
                    more = s.recv(262144)
                    if not more:
                        raise RuntimeError("the stream ended early")
                    data += more
                with lock:
                    events[0] += data.count(b"data: ")

    before = b.tree_cpu_seconds(proc.pid)
    threads = [threading.Thread(target=client, args=(STREAMS // 16,)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (b.tree_cpu_seconds(proc.pid) - before) / max(1, events[0]) * 1e6


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
    """This tree and another checkout in front of one raw upstream, interleaved rounds, CPU per request."""
    trees = {"this tree": b.ROOT, "against": args.against.resolve()}
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.raw_upstream(up_port, "1")
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
                b.wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", connections=32, seconds=2, body=COMPLETION,
                      token=b.CLIENT_TOKEN, cpus="1")
            for _ in range(args.rounds):
                for name in trees:
                    cpu0 = b.cpu_seconds(gateways[name].pid)
                    result = b.wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", connections=32,
                                   seconds=args.seconds, body=COMPLETION, token=b.CLIENT_TOKEN, cpus="1")
                    cpu[name].append((b.cpu_seconds(gateways[name].pid) - cpu0) / max(1, result["requests"]) * 1e6)
                    rps[name].append(result["rps"])
            per_event: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.rounds if args.stream_rounds is None else args.stream_rounds):
                for name in trees:
                    per_event[name].append(stream_cost(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", gateways[name]))
        finally:
            for proc in gateways.values():
                b.stop(proc)
            b.stop(upstream)
    print(f"proxy benchmark, side by side: level {args.level}, tracing {'on in this tree' if sink else 'off'}, {args.rounds} interleaved rounds of {args.seconds:g}s, "
          f"each gateway pinned to cpu0 in turn, the raw upstream and wrk on cpu1; medians")
    for name, tree in trees.items():
        print(f"{name:10} {str(tree):40} {b.median(rps[name]):9.0f} req/s  {b.median(cpu[name]):6.1f} us CPU/request  "
              f"(rounds: {', '.join(f'{v:.0f}' for v in cpu[name])})")
    ratio = b.median(cpu["this tree"]) / b.median(cpu["against"])
    print(f"CPU per request, this tree / against: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    if per_event["this tree"]:
        for name in trees:
            print(f"{name:10} streaming, {STREAMS} streams of {EVENTS} events: {b.median(per_event[name]):5.1f} us CPU per relayed event "
                  f"(rounds: {', '.join(f'{v:.1f}' for v in per_event[name])})")
        ratio = b.median(per_event["this tree"]) / b.median(per_event["against"])
        print(f"CPU per relayed event, this tree / against: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
