#!/usr/bin/env python3
"""What recording every decision costs: level 1 (everything recorded) vs level 0 with recording off.

Two gateways (one worker each, pinned to cpu0, run one at a time) in front of one demo
model; wrk runs alternate between them; medians of req/s at 32 connections and the
gateway's CPU per request. Target: level 1 costs at most 10 % of throughput.

    python scripts/bench_recording.py [--rounds 5] [--seconds 5] [--encrypt]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

PREDICT = '{"applicant":{"id":"a-17","group":"A","income":52000}}'


def variant(tmp: Path, name: str, up_port: int, port: int, *, level: int, evidence: bool, encrypt: bool) -> Path:
    directory = tmp / name
    directory.mkdir()
    (directory / "policy.yaml").write_text(
        f"extends: {b.ROOT / 'policies' / 'default.yaml'}\n"
        f"oversight: {{initial_level: {level}}}\n"
        + ("defaults: {sample_rate: {0: 0.0}}\n" if not evidence else "")
    )
    extra = f"evidence: {{enabled: {str(evidence).lower()}"
    if encrypt:
        extra += f", encryption_key: {base64.b64encode(os.urandom(32)).decode()}"
    extra += "}"
    return b.write_config(directory, up_port, port, extra=extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--encrypt", action="store_true", help="encrypt bodies at rest at level 1")
    args = parser.parse_args()
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.demo_model(up_port, "1")
        ports = {"level 0, recording off": b.free_port(), "level 1, all recorded": b.free_port()}
        configs = {
            "level 0, recording off": variant(tmp, "off", up_port, ports["level 0, recording off"], level=0, evidence=False, encrypt=False),
            "level 1, all recorded": variant(tmp, "on", up_port, ports["level 1, all recorded"], level=1, evidence=True, encrypt=args.encrypt),
        }
        rps: dict[str, list[float]] = {name: [] for name in configs}
        cpu: dict[str, list[float]] = {name: [] for name in configs}
        records = 0
        try:
            for round_no in range(args.rounds + 1):
                for name, config in configs.items():
                    gateway = b.gateway(config, ports[name], "0", log=tmp / f"{name[:7]}.log")
                    try:
                        url = f"http://127.0.0.1:{ports[name]}/models/demo/predict"
                        if round_no == 0:
                            b.wrk(url, connections=32, seconds=2, body=PREDICT, token=b.CLIENT_TOKEN, cpus="1")
                            continue  # warm-up round
                        before = b.cpu_seconds(gateway.pid)
                        result = b.wrk(url, connections=32, seconds=args.seconds, body=PREDICT, token=b.CLIENT_TOKEN, cpus="1")
                        cpu[name].append((b.cpu_seconds(gateway.pid) - before) / max(1, result["requests"]) * 1e6)
                        rps[name].append(result["rps"])
                        if "recorded" in name:
                            records += result["requests"]
                    finally:
                        b.stop(gateway)
        finally:
            b.stop(upstream)
        evidence_dir = tmp / "on" / "data" / "evidence" / "replica-0"
        from gateway.evidence.verify import verify_log

        report = verify_log(evidence_dir)
    off, on = "level 0, recording off", "level 1, all recorded"
    print(f"recording benchmark: {args.rounds} rounds of {args.seconds:g}s at 32 connections, gateways alternating on cpu0, "
          f"wrk and demo model on cpu1{', bodies encrypted' if args.encrypt else ''}; medians")
    for name in configs:
        print(f"  {name:24} {b.median(rps[name]):8.0f} req/s   {b.median(cpu[name]):6.0f} us CPU/request   runs: "
              + ", ".join(f"{x:.0f}" for x in rps[name]))
    cost = 1 - b.median(rps[on]) / b.median(rps[off])
    print(f"throughput cost of recording every decision: {cost * 100:.1f} % (target <= 10 %)")
    print(f"CPU per request added by recording: {b.median(cpu[on]) - b.median(cpu[off]):.0f} us")
    print(f"records written: {records}; the log verifies: {report.ok} ({report.summary()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
