#!/usr/bin/env python3
"""Instructions per request under callgrind: a figure the shared machine's noise cannot move.

CPU time per request on a shared 2-core VM moves by a third between rounds of the same
build; instruction counts do not. Each variant is one gateway run under
`valgrind --tool=callgrind` in front of the raw upstream; after a warm-up the counters
are zeroed, wrk drives it for `--seconds`, and the counts are dumped. Printed: instructions
per request in all, and the part run on the gateway's own background threads (the
evidence log's sync thread, the store's thread). Variants run side by side; callgrind
makes them 50-100x slower, so a pass holds fewer requests than at full speed and per-pass
costs weigh more: compare variants with each other, not with CPU time.

    python scripts/bench_instructions.py [--seconds 20] [--variants 'level 0, no sampling' ...]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

COMPLETION = '{"model":"demo","messages":[{"role":"user","content":"Should applicant a-17 get the loan?"}]}'
VARIANTS = {
    "level 0, no sampling": (0, 0.0),
    "level 0, 2 % sampled": (0, 0.02),
    "level 0, 20 % sampled": (0, 0.2),
    "level 1, no sampling": (1, 0.0),
}


def start(tmp: Path, name: str, up_port: int, level: int, rate: float) -> tuple[subprocess.Popen, int, Path]:
    directory = tmp / re.sub(r"\W+", "-", name)
    directory.mkdir()
    port = b.free_port()
    policy = f"oversight: {{initial_level: {level}}}\ndefaults: {{sample_rate: {{0: {rate}, 1: {rate}}}}}\n"
    config = b.write_config(directory, up_port, port, extra="evidence: {enabled: true}", policy_overrides=policy)
    out = directory / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "gateway", "serve",
           "--config", str(config), "--port", str(port)]
    process = b.start(cmd, port, env={"PYTHONPATH": str(b.ROOT)}, log=directory / "gateway.log", cwd=b.ROOT,
                      timeout=600)  # a gateway under callgrind starts 50-100x slower
    return process, port, out


def counts(dump: Path) -> tuple[int, int]:
    """(all instructions, those under a background thread's start) in one callgrind dump."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
                          capture_output=True, text=True, check=True).stdout
    total = background = 0
    for line in text.splitlines():
        found = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if not found:
            continue
        value = int(found.group(1).replace(",", ""))
        if found.group(2).startswith("PROGRAM TOTALS"):
            total = value
        elif ":thread_run " in found.group(2) or found.group(2).endswith(":thread_run"):
            background = max(background, value)
    return total, background


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    with b.tempdir() as tmp:
        up_port = b.free_port()
        upstream = b.raw_upstream(up_port, "1")
        running = {}
        try:
            for name in args.variants:
                running[name] = start(tmp, name, up_port, *VARIANTS[name])
            for name, (process, port, _) in running.items():  # warm up, one at a time
                b.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", connections=8, seconds=10, body=COMPLETION,
                      token=b.CLIENT_TOKEN, cpus="1")
            results = {}
            for name, (process, port, out) in running.items():
                subprocess.run(["callgrind_control", "-z", str(process.pid)], capture_output=True, check=True)
                done = b.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", connections=8, seconds=args.seconds,
                             body=COMPLETION, token=b.CLIENT_TOKEN, cpus="1")
                before = set(out.parent.glob(out.name + ".*"))
                subprocess.run(["callgrind_control", "-d", str(process.pid)], capture_output=True, check=True)
                deadline = time.monotonic() + 60
                while not (set(out.parent.glob(out.name + ".*")) - before) and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(1.0)  # the dump is written in full before the next variant runs
                dump = max(set(out.parent.glob(out.name + ".*")) - before)
                results[name] = (done["requests"], *counts(dump))
        finally:
            for process, _, _ in running.values():
                b.stop(process)
            b.stop(upstream)
    print(f"interpreter: {b.interpreter()}")
    print(f"instructions per request under callgrind, {args.seconds:g} s of wrk at 8 connections each")
    base = results[args.variants[0]]
    for name, (requests, total, background) in results.items():
        per = total / max(1, requests)
        ratio = per / (base[1] / max(1, base[0]))
        print(f"  {name:24} {requests:6d} requests  {per / 1000:7.0f} k/request  (background threads "
              f"{background / max(1, requests) / 1000:5.0f} k)  x{ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
