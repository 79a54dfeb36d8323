#!/usr/bin/env python3
"""Two endpoints per version under steady load: one stops, is ejected, restarts and gets traffic again.

Starts two demo models (answering as `a` and `b`) and a gateway whose version lists both
(`upstreams: [a, b]`, `probe_interval` 1 s), then sends an open-loop stream of requests at
a fixed rate (a request every 1/rate s, whatever the answers do). At `--stop-at` seconds
endpoint b is killed (SIGKILL: no goodbye), at `--restart-at` it starts again on the
same port. Reported: requests sent, failed (and whether a failed one was sent before the
kill, so could have reached b), how long until the gateway showed b ejected, and how long
after b listened again until it answered a request.

    python scripts/bench_endpoints.py                  # 300 req/s for 14 s
    python scripts/bench_endpoints.py --rate 500 --stop signal   # SIGTERM instead of SIGKILL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

BODY = b'{"applicant":{"id":"e-1","group":"A","income":52000}}'


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def one_request(port: int, free: asyncio.Queue, request: bytes) -> tuple[int, bytes]:
    conn = await free.get()
    try:
        if conn is None:
            conn = Connection(*await asyncio.open_connection("127.0.0.1", port))
        conn.writer.write(request)
        head = await conn.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await conn.reader.readexactly(length)
        free.put_nowait(conn)
        return int(head[9:12]), body
    except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        free.put_nowait(None)  # a fresh connection next time
        return 0, str(exc).encode()


async def drive(port: int, rate: float, seconds: float, results: list, connections: int = 64) -> None:
    free: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(None)
    request = (f"POST /models/demo/predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               f"authorization: Bearer {b.CLIENT_TOKEN}\r\ncontent-length: {len(BODY)}\r\n\r\n").encode() + BODY
    started = time.monotonic()
    tasks = []
    for i in range(int(rate * seconds)):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

        async def run(sent: float = time.monotonic()) -> None:
            status, body = await one_request(port, free, request)
            results.append((sent, time.monotonic(), status, body))

        tasks.append(asyncio.create_task(run()))
    await asyncio.gather(*tasks)


def watch(gw_port: int, url: str, stop: threading.Event, changes: list) -> None:
    """Poll the gateway's view of endpoint `url` every 20 ms; record each change of `up`."""
    import httpx

    last = None
    with httpx.Client(base_url=f"http://127.0.0.1:{gw_port}", headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"}) as c:
        while not stop.is_set():
            endpoints = c.get("/admin/models").json()["models"]["demo"]["versions"]["v1"]["endpoints"]
            up = next(e["up"] for e in endpoints if e["url"].rstrip("/") == url)
            if up != last:
                changes.append((time.monotonic(), up))
                last = up
            time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--stop-at", type=float, default=4.0)
    parser.add_argument("--restart-at", type=float, default=8.0)
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--stop", choices=["kill", "signal"], default="kill", help="SIGKILL (default) or SIGTERM")
    args = parser.parse_args()

    with b.tempdir() as tmp:
        a_port, b_port, gw_port = b.free_port(), b.free_port(), b.free_port()
        endpoint_a, endpoint_b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
        config = b.write_config(tmp, a_port, gw_port, policy_overrides="defaults: {sample_rate: {0: 0.0}}\n")
        text = config.read_text().replace(f'v1: {{upstream: "{endpoint_a}"}}',
                                          f'v1: {{upstreams: ["{endpoint_a}", "{endpoint_b}"], '
                                          f'probe_interval: {args.probe_interval}s}}')
        config.write_text(text)
        model_a = b.demo_model(a_port, "1", "--name", "a")
        model_b = b.demo_model(b_port, "1", "--name", "b")
        gateway = b.gateway(config, gw_port, "0", log=tmp / "gateway.log")
        results: list = []
        changes: list = []
        stop_watching = threading.Event()
        watcher = threading.Thread(target=watch, args=(gw_port, endpoint_b, stop_watching, changes), daemon=True)
        marks: dict[str, float] = {}
        try:
            watcher.start()

            async def scenario() -> None:
                load = asyncio.create_task(drive(gw_port, args.rate, args.seconds, results))
                await asyncio.sleep(args.stop_at)
                marks["stop"] = time.monotonic()
                model_b.send_signal(signal.SIGKILL if args.stop == "kill" else signal.SIGTERM)
                await asyncio.to_thread(model_b.wait)
                await asyncio.sleep(max(0.0, args.restart_at - args.stop_at - (time.monotonic() - marks["stop"])))
                restarted = await asyncio.to_thread(b.demo_model, b_port, "1", "--name", "b")  # returns once it listens
                marks["listening"] = time.monotonic()
                marks["pid"] = restarted.pid
                await load
                b.stop(restarted)

            asyncio.run(scenario())
        finally:
            stop_watching.set()
            watcher.join(2)
            b.stop(gateway)
            b.stop(model_a)
            if model_b.poll() is None:
                b.stop(model_b)

    stop, listening = marks["stop"], marks["listening"]
    failed = [r for r in results if r[2] != 200]
    failed_after_stop = [r for r in failed if r[0] >= stop]
    ejected = next((t for t, up in changes if not up and t >= stop), None)
    back_in_rotation = next((t for t, up in changes if up and t >= listening), None)
    first_b_answer = min((r[1] for r in results if r[0] >= listening and r[2] == 200 and json.loads(r[3]).get("model") == "b"),
                         default=None)
    served_by = {"a": 0, "b": 0}
    for r in results:
        if r[2] == 200:
            served_by[json.loads(r[3])["model"]] += 1
    print(f"two endpoints, {args.rate:g} req/s open loop for {args.seconds:g}s; endpoint b {args.stop}ed at "
          f"{args.stop_at:g}s, restarted at {args.restart_at:g}s; probe interval {args.probe_interval:g}s")
    print(f"requests sent {len(results)}, answered 200 {len(results) - len(failed)} (a {served_by['a']}, b {served_by['b']}), "
          f"failed {len(failed)}")
    print(f"failed requests sent after the stop (they could not have reached b): {len(failed_after_stop)}")
    if failed:
        print("  failures: " + "; ".join(f"sent {r[0] - stop:+.3f}s from the stop: {r[2]} {r[3][:80]!r}" for r in failed[:5]))
    print(f"b shown ejected {((ejected - stop) * 1000) if ejected else float('nan'):.0f} ms after the stop (limit 1000 ms)")
    print(f"b back in rotation {((back_in_rotation - listening) * 1000) if back_in_rotation else float('nan'):.0f} ms, "
          f"first answer from b {((first_b_answer - listening) * 1000) if first_b_answer else float('nan'):.0f} ms "
          f"after it listened again (probe interval {args.probe_interval * 1000:.0f} ms)")
    ok = (not failed_after_stop and ejected is not None and ejected - stop <= 1.0 and first_b_answer is not None
          and first_b_answer - listening <= args.probe_interval + 0.1)
    print("result: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
