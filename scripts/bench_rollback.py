#!/usr/bin/env python3
"""Rollback under load: 2 gateway replicas on one Redis, half the requests streamed.

Part 1: load (>= 200 req/s for 10 s, half of them streamed chat completions) through both
replicas while a rollback runs in the middle. Checks: zero failed requests; every answer
that ended before the rollback was sent came from the old version, every request that
started after it answered got the new one; no stream mixes versions (each event names
the model that wrote it).

Part 2: 50 switches back and forth; for each, the time from sending the call until every
replica serves the new version (the call answers once both confirmed; one probe per
replica proves it). p50, p99 and max.

    python scripts/bench_rollback.py [--seconds 10] [--rate 250] [--switches 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

CHAT = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "tell me about rollbacks"}]}
PREDICT = {"applicant": {"id": "rb-1", "group": "A"}}


@dataclass
class Answer:
    started: float
    ended: float = 0.0
    status: int = 0
    version: str = ""
    streamed: bool = False
    models_seen: set[str] = field(default_factory=set)
    error: str | None = None


async def request(port: int, streamed: bool) -> Answer:
    body = json.dumps(CHAT if streamed else PREDICT).encode()
    path = "/v1/chat/completions" if streamed else "/models/demo/predict"
    answer = Answer(time.monotonic(), streamed=streamed)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {b.CLIENT_TOKEN}\r\n"
                      f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body)
        raw = await reader.read()
        writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        answer.status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        answer.version = headers.get("x-model-version", "")
        for chunk in rest.split(b'"model":"')[1:]:
            answer.models_seen.add(chunk.split(b'"', 1)[0].decode())
    except OSError as exc:
        answer.error = f"{exc.__class__.__name__}: {exc}"
    answer.ended = time.monotonic()
    return answer


async def switch(port: int, to: str, reason: str, rollback: bool) -> tuple[float, float, dict]:
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        sent = time.monotonic()
        path, body = ("rollback", {"to": to, "reason": reason}) if rollback else ("activate", {"version": to, "reason": reason})
        r = await client.post(f"http://127.0.0.1:{port}/admin/models/demo/{path}", json=body,
                              headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"})
        answered = time.monotonic()
    r.raise_for_status()
    return sent, answered, r.json()


async def load(ports: list[int], seconds: float, rate: float, at_half) -> tuple[list[Answer], tuple]:
    answers: list[Answer] = []
    tasks = []
    start = time.monotonic()
    n = 0
    switch_result = None
    switch_task = None
    while time.monotonic() - start < seconds:
        if switch_task is None and time.monotonic() - start >= seconds / 2:
            switch_task = asyncio.create_task(at_half())
        tasks.append(asyncio.create_task(request(ports[n % 2], streamed=(n // 2) % 2 == 0)))
        n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    answers = list(await asyncio.gather(*tasks))
    switch_result = await switch_task
    return answers, switch_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second offered (half streamed)")
    parser.add_argument("--switches", type=int, default=50)
    args = parser.parse_args()

    with b.tempdir() as tmp:
        redis = b.redis_server(tmp)
        v1, v2 = b.free_port(), b.free_port()
        demos = [b.demo_model(v1, None, "--name", "demo-v1", "--stream-delay-ms", "5"),
                 b.demo_model(v2, None, "--name", "demo-v2", "--stream-delay-ms", "5")]
        ports = [b.free_port(), b.free_port()]
        gateways = []
        try:
            for i, port in enumerate(ports):
                directory = tmp / f"replica-{i}"
                directory.mkdir()
                config = b.write_config(directory, v1, port, store=f"redis://127.0.0.1:{redis.port}/0",
                                        versions={"v1": v1, "v2": v2}, extra="evidence: {enabled: true}")
                gateways.append(b.gateway(config, port, None, log=directory / "gateway.log"))
            asyncio.run(switch(ports[0], "v2", "bench: start from v2", rollback=False))

            answers, (sent, answered, result) = asyncio.run(
                load(ports, args.seconds, args.rate, lambda: switch(ports[1], "v1", "bench: roll back under load", rollback=True)))
            latencies = asyncio.run(measure_switches(ports, args.switches))
        finally:
            for process in gateways + demos:
                b.stop(process)
            b.stop(redis.proc)

    failed = [a for a in answers if a.error or a.status != 200]
    before = [a for a in answers if a.ended < sent]
    after = [a for a in answers if a.started > answered]
    during = len(answers) - len(before) - len(after)
    wrong_before = [a for a in before if a.version != "v2"]
    wrong_after = [a for a in after if a.version != "v1"]
    streams = [a for a in answers if a.streamed and not a.error]
    mixed = [a for a in streams if len(a.models_seen) != 1 or a.models_seen != {f"demo-{a.version}"}]
    elapsed = max(a.ended for a in answers) - min(a.started for a in answers)
    print(f"rollback under load: 2 replicas on one Redis, {len(answers)} requests in {elapsed:.1f}s "
          f"({len(answers) / elapsed:.0f} req/s offered at {args.rate:g}/s), {len(streams)} streamed")
    print(f"  rollback v2 -> v1 sent at {sent - min(a.started for a in answers):.2f}s, answered in {(answered - sent) * 1000:.1f} ms "
          f"(applied by {result['applied_by']}/{result['replicas']} replicas)")
    print(f"  failed requests: {len(failed)}" + (f" (first: {failed[0].status} {failed[0].error})" if failed else ""))
    print(f"  ended before the call: {len(before)}, not from v2: {len(wrong_before)}; started after it answered: {len(after)}, "
          f"not from v1: {len(wrong_after)}; in flight across the switch: {during}")
    print(f"  streams mixing versions (or not matching X-Model-Version): {len(mixed)} of {len(streams)}")
    print(f"switch latency over {len(latencies)} switches (call sent -> every replica serving the new version): "
          f"p50 {b.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms (target p99 <= 50 ms)")
    return 0 if not (failed or wrong_before or wrong_after or mixed) else 1


async def measure_switches(ports: list[int], count: int) -> list[float]:
    import httpx

    out = []
    target = "v2"
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(count):
            sent = time.monotonic()
            r = await client.post(f"http://127.0.0.1:{ports[i % 2]}/admin/models/demo/activate",
                                  json={"version": target, "reason": f"switch {i}"},
                                  headers={"authorization": f"Bearer {b.OPERATOR_TOKEN}"})
            r.raise_for_status()
            for port in ports:  # the call answered after both confirmed: each must serve the new version now
                probe = await client.post(f"http://127.0.0.1:{port}/models/demo/predict", json=PREDICT,
                                          headers={"authorization": f"Bearer {b.CLIENT_TOKEN}"})
                if probe.headers.get("x-model-version") != target:
                    raise SystemExit(f"replica on {port} still serves {probe.headers.get('x-model-version')} after switch {i}")
            out.append((time.monotonic() - sent) * 1000)
            target = "v1" if target == "v2" else "v2"
    return out


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered) + 0.5)) - 1))]


if __name__ == "__main__":
    raise SystemExit(main())
