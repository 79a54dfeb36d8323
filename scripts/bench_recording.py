#!/usr/bin/env python3
"""What recording every decision costs: level 1 vs level 0 with recording off, side by side.

Gateways (one worker each, pinned to cpu0, all running, driven one at a time) in front
of one raw upstream (scripts/rawupstream.py, a 460-byte chat completion); wrk runs rotate through them round after round; medians of req/s at
32 connections and of the gateway's CPU per request. Variants:

- level 0, recording off (evidence disabled, no sampling): the floor;
- level 0, as shipped (2 % sampled, each sample recorded): the reference level 1 is held to;
- level 1, recorded, no sampling: the cost of recording alone;
- level 1, recorded, default policy (15 % sampled into the review queue): level 1 as shipped.

Target: level 1 as shipped within 10 % of level 0 as shipped, in CPU per request and throughput.

    python scripts/bench_recording.py [--rounds 7] [--seconds 4] [--encrypt]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

COMPLETION = '{"model":"demo","messages":[{"role":"user","content":"Should applicant a-17 get the loan?"}]}'
NO_SAMPLING = "defaults: {sample_rate: {0: 0.0, 1: 0.0}}\n"
VARIANTS = {
    "level 0, recording off": dict(level=0, evidence=False, policy=NO_SAMPLING),
    "level 0, as shipped": dict(level=0, evidence=True, policy=""),
    "level 1, recorded": dict(level=1, evidence=True, policy=NO_SAMPLING),
    "level 1, recorded, 15% sampled": dict(level=1, evidence=True, policy=""),
}


def write_variant(tmp: Path, number: int, up_port: int, port: int, *, level: int, evidence: bool, policy: str,
                  encrypt: bool) -> Path:
    directory = tmp / f"variant-{number}"
    directory.mkdir()
    extra = f"evidence: {{enabled: {str(evidence).lower()}"
    if encrypt and evidence:
        extra += f", encryption_key: {base64.b64encode(os.urandom(32)).decode()}"
    extra += "}"
    return b.write_config(directory, up_port, port, extra=extra,
                          policy_overrides=f"oversight: {{initial_level: {level}}}\n{policy}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--encrypt", action="store_true", help="encrypt bodies at rest in the recorded variants")
    args = parser.parse_args()
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.raw_upstream(up_port, "1")
        gateways = {}
        try:
            for number, (name, spec) in enumerate(VARIANTS.items()):
                port = b.free_port()
                config = write_variant(tmp, number, up_port, port, encrypt=args.encrypt, **spec)
                gateways[name] = (b.gateway(config, port, "0", log=tmp / f"gateway-{number}.log"), port)
            rps: dict[str, list[float]] = {name: [] for name in VARIANTS}
            cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for round_no in range(args.rounds + 1):
                names = list(VARIANTS) if round_no % 2 else list(reversed(VARIANTS))
                for name in names:
                    process, port = gateways[name]
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    before = b.cpu_seconds(process.pid)
                    seconds = 2 if round_no == 0 else args.seconds
                    result = b.wrk(url, connections=32, seconds=seconds, body=COMPLETION, token=b.CLIENT_TOKEN, cpus="1")
                    if round_no:  # round 0 warms up
                        cpu[name].append((b.cpu_seconds(process.pid) - before) / max(1, result["requests"]) * 1e6)
                        rps[name].append(result["rps"])
        finally:
            for process, _ in gateways.values():
                b.stop(process)
            b.stop(upstream)
        from gateway.evidence import verify_log

        reports = [verify_log(tmp / f"variant-{n}" / "data" / "evidence" / "replica-0") for n in (1, 2, 3)]
    baseline = "level 0, recording off"
    print(f"interpreter: {b.interpreter()}")
    print(f"recording benchmark: {args.rounds} rounds of {args.seconds:g}s at 32 connections; each gateway pinned to cpu0 "
          f"and driven alone, wrk and the raw upstream on cpu1{'; bodies encrypted' if args.encrypt else ''}; medians")
    base_rps, base_cpu = b.median(rps[baseline]), b.median(cpu[baseline])
    for name in VARIANTS:
        m_rps, m_cpu = b.median(rps[name]), b.median(cpu[name])
        cost = "" if name == baseline else f"   cost {(1 - m_rps / base_rps) * 100:5.1f} %  (+{m_cpu - base_cpu:.0f} us CPU)"
        print(f"  {name:32} {m_rps:7.0f} req/s {m_cpu:5.0f} us CPU/request{cost}")
        print(f"  {'':32} runs: {', '.join(f'{x:.0f}' for x in rps[name])}")
    shipped0, shipped1 = "level 0, as shipped", "level 1, recorded, 15% sampled"
    cpu_ratio = b.median(cpu[shipped1]) / b.median(cpu[shipped0])
    rps_ratio = b.median(rps[shipped1]) / b.median(rps[shipped0])
    print(f"level 1 / level 0, both as shipped: CPU per request {cpu_ratio:.3f} ({(cpu_ratio - 1) * 100:+.1f} %), "
          f"throughput {rps_ratio:.3f} ({(rps_ratio - 1) * 100:+.1f} %); target: within 10 %")
    for name, report in zip(list(VARIANTS)[1:], reports):
        print(f"  {name}: {report.summary()[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
