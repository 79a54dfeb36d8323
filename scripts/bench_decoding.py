#!/usr/bin/env python3
"""What reading compressed answers costs: decoding alone, and a level-2 gateway with gzip vs identity.

Part 1 times `gateway.proxy.content.decode` on chat-completion-like JSON of three sizes in
each coding the gateway reads. Part 2 runs an upstream that compresses when asked (as
vLLM, nginx and aiohttp do) and a gateway at level 2 (every answer read for its
confidence), pinned to cpu0, and drives it from cpu1 with and without
`Accept-Encoding: gzip`, interleaved: the difference in gateway CPU per request is what
decoding costs against asking the upstream for identity.

    python scripts/bench_decoding.py                 # both parts (about a minute)
    python scripts/bench_decoding.py --rounds 5 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib as b  # noqa: E402


def answer(size: int) -> bytes:
    """A chat completion whose message is about `size` bytes of prose, with a confidence the policy reads."""
    words = ("the applicant's income was verified against two payslips and the requested amount is within "
             "policy limits for this product ").split()
    text, i = [], 0
    while sum(len(w) + 1 for w in text) < size:
        text.append(words[i % len(words)])
        i += 1
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "demo", "confidence": 0.95,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(text)},
                                    "finish_reason": "stop"}]}).encode()


def micro(iterations: int) -> None:
    import brotli
    import zstandard

    from gateway.proxy.content import decode

    encoders = {"gzip": lambda d: gzip.compress(d, 6), "deflate": zlib.compress, "br": lambda d: brotli.compress(d, quality=5),
                "zstd": lambda d: zstandard.ZstdCompressor(level=3).compress(d)}
    print(f"decode alone (median of {iterations}, one core), microseconds per answer:")
    print(f"{'size':>10}" + "".join(f"{name:>12}" for name in encoders) + f"{'identity':>12}")
    for size in (1024, 16 * 1024, 256 * 1024):
        plain = answer(size)
        row = []
        for name, encode in [*encoders.items(), ("identity", lambda d: d)]:
            data = encode(plain)
            headers = [] if name == "identity" else [(b"content-encoding", name.encode())]
            times = []
            for _ in range(iterations):
                started = time.perf_counter()
                content = decode(headers, data, 10 << 20)
                times.append((time.perf_counter() - started) * 1e6)
            assert content.body == plain
            row.append(b.median(times))
        print(f"{len(plain):>10}" + "".join(f"{t:12.1f}" for t in row))


async def serve(port: int, size: int) -> None:
    """The upstream: one answer, gzip-coded when the request accepts gzip."""
    plain = answer(size)
    coded = gzip.compress(plain, 6)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if b"gzip" in request.lower().split(b"accept-encoding:", 1)[-1].split(b"\r\n", 1)[0]:
                    writer.write(head + b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(coded) + coded)
                else:
                    writer.write(head + b"content-length: %d\r\n\r\n" % len(plain) + plain)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(one, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def end_to_end(rounds: int, seconds: float, size: int) -> None:
    with b.tempdir() as tmp:
        up_port, gw_port = b.free_port(), b.free_port()
        upstream = b.start([sys.executable, __file__, "--serve", str(up_port), "--size", str(size)], up_port, "1")
        config = b.write_config(tmp, up_port, gw_port, policy_overrides="defaults: {sample_rate: {0: 0.0, 1: 0.0, 2: 0.0}}\n")
        gateway = b.gateway(config, gw_port, "0", log=tmp / "gateway.log")
        try:
            import httpx

            httpx.put(f"http://127.0.0.1:{gw_port}/admin/oversight/global", json={"level": 2, "reason": "benchmark"},
                      headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"}, timeout=10).raise_for_status()
            url = f"http://127.0.0.1:{gw_port}/models/demo/predict"
            kinds = {"identity": {}, "gzip": {"Accept-Encoding": "gzip"}}
            cpu: dict[str, list[float]] = {k: [] for k in kinds}
            rps: dict[str, list[float]] = {k: [] for k in kinds}
            for headers in kinds.values():  # warm
                b.wrk(url, connections=16, seconds=2, body="{}", token=b.CLIENT_TOKEN, cpus="1", headers=headers)
            for _ in range(rounds):
                for kind, headers in kinds.items():
                    before = b.cpu_seconds(gateway.pid)
                    result = b.wrk(url, connections=16, seconds=seconds, body="{}", token=b.CLIENT_TOKEN, cpus="1",
                                   headers=headers)
                    if result["errors"]:
                        raise SystemExit(f"{kind}: {result['errors']} answers were not 2xx (held?): see {tmp / 'gateway.log'}")
                    cpu[kind].append((b.cpu_seconds(gateway.pid) - before) / max(1, result["requests"]) * 1e6)
                    rps[kind].append(result["rps"])
        finally:
            b.stop(gateway)
            b.stop(upstream)
    plain, coded = len(answer(size)), len(gzip.compress(answer(size), 6))
    print(f"\nlevel 2, every answer read for its confidence and released; {rounds} interleaved rounds of {seconds:g}s, "
          f"16 connections; gateway on cpu0, upstream and load on cpu1; medians")
    for kind in cpu:
        print(f"{kind:9} {b.median(rps[kind]):8.0f} req/s  {b.median(cpu[kind]):6.1f} us gateway CPU/request  "
              f"(answer on the wire: {coded if kind == 'gzip' else plain} bytes)")
    extra = b.median(cpu["gzip"]) - b.median(cpu["identity"])
    print(f"decoding gzip costs {extra:+.1f} us per request ({extra / b.median(cpu['identity']) * 100:+.1f} %) against "
          f"identity, and saves {plain - coded} of {plain} bytes per answer on each hop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=2048, help="answer size for part 2 (bytes of message text)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.size))
        return 0
    micro(args.iterations)
    end_to_end(args.rounds, args.seconds, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
