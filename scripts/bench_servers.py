#!/usr/bin/env python3
"""The ASGI server's own floor: one trivial ASGI app (read the body, answer 460 bytes) under each server.

What the gateway's data plane can never go below under a given server: the proxy benchmark's
CPU per request minus this floor is the gateway's own work. Side by side in one run, each
server pinned to cpu0, wrk to cpu1, interleaved rounds, medians.

    python scripts/bench_servers.py                     # uvicorn (httptools, as the gateway runs it)
    python scripts/bench_servers.py --granian /tmp/gv/bin/granian   # and Granian (pip install granian)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

APP = '''
import sys
sys.path.insert(0, {scripts!r})
from rawupstream import BODY
HEAD = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({{"type": "http.response.start", "status": 200, "headers": HEAD}})
    await send({{"type": "http.response.body", "body": BODY}})
'''
BODY = '{"model":"demo","messages":[{"role":"user","content":"Should applicant a-17 get the loan?"}]}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--granian", help="a granian executable to compare (it is not a dependency of the gateway)")
    args = parser.parse_args()
    with b.tempdir() as tmp:
        (tmp / "floorapp.py").write_text(APP.format(scripts=str(b.ROOT / "scripts")))
        commands = {
            "uvicorn httptools": [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp), "floorapp:app", "--loop", "uvloop",
                                  "--http", "httptools", "--no-access-log", "--log-level", "warning", "--port", "{port}"],
            "raw upstream (no ASGI)": [sys.executable, str(b.ROOT / "scripts" / "rawupstream.py"), "--port", "{port}"],
        }
        if args.granian:
            granian = shutil.which(args.granian) or args.granian
            commands["granian asgi"] = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--workers", "1",
                                        "--runtime-threads", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
                                        "--runtime-mode", "st", "--working-dir", str(tmp), "--port", "{port}", "floorapp:app"]
        procs, ports = {}, {}
        try:
            for name, cmd in commands.items():
                ports[name] = b.free_port()
                procs[name] = b.start([part.format(port=ports[name]) for part in cmd], ports[name], "0",
                                      log=tmp / f"{len(procs)}.log")
            cpu: dict[str, list[float]] = {name: [] for name in commands}
            rps: dict[str, list[float]] = {name: [] for name in commands}
            for name in commands:
                b.wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", connections=32, seconds=2, body=BODY,
                      token="x", cpus="1")
            for _ in range(args.rounds):
                for name in commands:
                    before = b.tree_cpu_seconds(procs[name].pid)
                    result = b.wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", connections=32,
                                   seconds=args.seconds, body=BODY, token="x", cpus="1")
                    cpu[name].append((b.tree_cpu_seconds(procs[name].pid) - before) / max(1, result["requests"]) * 1e6)
                    rps[name].append(result["rps"])
        finally:
            for proc in procs.values():
                b.stop(proc)
    print(f"server floor: a trivial ASGI app, {args.rounds} interleaved rounds of {args.seconds:g}s, 32 connections; "
          f"server on cpu0, wrk on cpu1; medians")
    for name in commands:
        print(f"{name:24}{b.median(rps[name]):10.0f} req/s{b.median(cpu[name]):9.1f} us CPU/request  "
              f"(rounds: {', '.join(f'{v:.1f}' for v in cpu[name])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
