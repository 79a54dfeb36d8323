"""A small HTTP/1.1 keep-alive load generator: the benchmarks' fallback when wrk is not installed, and their
fixed-rate load (`--rate`), which wrk does not offer.

Runs as its own process (so it never shares an event loop with what it measures) and
prints one JSON object: rps, requests, errors, p50 and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


async def worker(host: str, port: int, request: bytes, deadline: float, latencies: list[float], errors: list[int],
                 interval: float = 0.0, offset: float = 0.0) -> None:
    """Requests back to back, or with `interval`, one every `interval` seconds from `offset` on: then a latency
    runs from the moment the request was due (a late answer delays the next one, and the delay is counted)."""
    reader, writer = await asyncio.open_connection(host, port)
    due = time.perf_counter() + offset
    try:
        while time.perf_counter() < deadline:
            if interval:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                started, due = due, due + interval
            else:
                started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = False
            for line in head.split(b"\r\n"):
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--body", default="{}")
    parser.add_argument("--token", default="")
    parser.add_argument("--header", action="append", default=[], help="an extra request header, NAME: VALUE")
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second in all, spread over the "
                        "connections (0: each connection sends back to back)")
    args = parser.parse_args()
    url = urlsplit(args.url)
    body = args.body.encode()
    extra = "".join(f"{header}\r\n" for header in args.header)
    request = (
        f"POST {url.path or '/'} HTTP/1.1\r\nhost: {url.hostname}:{url.port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {args.token}\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    deadline = started + args.seconds
    interval = args.connections / args.rate if args.rate else 0.0
    await asyncio.gather(*(worker(url.hostname, url.port, request, deadline, latencies, errors, interval,
                                  interval * i / args.connections) for i in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    print(json.dumps({"rps": len(latencies) / elapsed, "requests": len(latencies), "errors": len(errors), "p50": pick(0.5), "p99": pick(0.99)}))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
