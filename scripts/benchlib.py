"""Helpers shared by the benchmark scripts: processes, free ports, wrk, CPU and memory readings.

Benchmarks are scripts, not tests: they start real processes on loopback, alternate the
configurations they compare within one run, and print medians and ratios.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TOKEN = "gw_bench_client"
OPERATOR_TOKEN = "gw_bench_operator"


def interpreter() -> str:
    """The interpreter the benchmarked Python processes run on, and how its libpython is linked.

    The build moves CPU per request by about a fifth (README, Benchmarks): a libpython
    linked as a shared library without PGO (a pyenv build with --enable-shared, say) is
    slower than one linked into the executable (Debian's python3).
    """
    import platform

    exe = os.path.realpath(sys.executable)
    try:
        linked = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return f"python {platform.python_version()} ({exe})"
    return f"python {platform.python_version()} ({exe}, libpython {'shared' if 'libpython' in linked else 'static'})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def taskset(cpus: str | None) -> list[str]:
    if cpus is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", cpus]


def start(cmd: list[str], port: int, cpus: str | None = None, env: dict | None = None, log: Path | None = None,
          cwd: Path | None = None, timeout: float = 20.0) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(taskset(cpus) + cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True, cwd=cwd)
    wait_port(port, proc, timeout)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_model(port: int, cpus: str | None = None, *args: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "gateway", "demo-model", "--port", str(port), *args], port, cpus)


def write_config(directory: Path, upstream_port: int, port: int, *, store: str = "embedded", extra: str = "",
                 policy_overrides: str = "", versions: dict[str, int] | None = None) -> Path:
    """`policy_overrides`: YAML lines added below `extends:` in the policy file (which is then always rewritten)."""
    import hashlib

    def h(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    policy = directory / "policy.yaml"
    if policy_overrides or not policy.exists():
        policy.write_text(f"extends: {ROOT / 'policies' / 'default.yaml'}\n{policy_overrides}")
    listed = "\n".join(f'      {name}: {{upstream: "http://127.0.0.1:{up}"}}' for name, up in (versions or {"v1": upstream_port}).items())
    config = directory / "gateway.yaml"
    config.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}}}
data_dir: {directory / 'data'}
store: {store}
policy: {policy}
logging: {{level: warning, access_log: false}}
models:
  demo:
    versions:
{listed}
tokens:
  - {{id: bench-client, role: client, sha256: {h(CLIENT_TOKEN)}}}
  - {{id: bench-operator, role: operator, sha256: {h(OPERATOR_TOKEN)}}}
{extra}
"""
    )
    return config


@dataclass
class RedisProcess:
    port: int
    proc: subprocess.Popen


def redis_server(directory: Path) -> RedisProcess:
    """A throwaway redis-server on a free loopback port (no persistence)."""
    port = free_port()
    proc = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(directory)], port)
    return RedisProcess(port, proc)


def gateway(config: Path, port: int, cpus: str | None = None, log: Path | None = None,
            tree: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """A gateway process; `tree`: the checkout whose `gateway` package it runs (default: this one); `env`: added."""
    tree = tree or ROOT
    return start([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)], port, cpus,
                 log=log, cwd=tree, env={"PYTHONPATH": str(tree), **(env or {})})


class OtlpSink:
    """An OTLP/HTTP receiver that counts what it is sent and keeps none of it (for `--tracing`)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.posts = self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                sink.bytes += len(self.rfile.read(int(self.headers.get("content-length") or 0)))
                sink.posts += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.env = {"OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.server.server_address[1]}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def tempdir():
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as d:
        yield Path(d)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its finished children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_WRK_LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""


def wrk(url: str, *, connections: int, seconds: float, body: str, token: str, cpus: str | None = None,
        headers: dict[str, str] | None = None) -> dict:
    """Drive `url` with wrk (or the Python load generator without it); return req/s and latency percentiles."""
    if shutil.which("wrk") is None:
        return pyload(url, connections=connections, seconds=seconds, body=body, token=token, cpus=cpus, headers=headers)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA.format(body=body.replace("'", "\\'"), token=token))
        f.writelines(f'wrk.headers["{name}"] = "{value}"\n' for name, value in (headers or {}).items())
        script = f.name
    try:
        out = subprocess.run(
            taskset(cpus) + ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script, url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(script)
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = ms(match.group(1)) if match else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return result


def pyload(url: str, *, connections: int, seconds: float, body: str, token: str, cpus: str | None = None,
           headers: dict[str, str] | None = None, rate: float = 0.0) -> dict:
    """scripts/loadgen.py in its own process; `rate` > 0: that many requests per second, latency from when each was due."""
    cmd = taskset(cpus) + [sys.executable, str(ROOT / "scripts" / "loadgen.py"), url, "--connections", str(connections),
                           "--seconds", str(seconds), "--body", body, "--token", token, "--rate", str(rate)]
    for name, value in (headers or {}).items():
        cmd += ["--header", f"{name}: {value}"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (nginx's workers, a supervisor's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        todo.extend(children.get(current, ()))
    return total


def raw_upstream(port: int, cpus: str | None = None) -> subprocess.Popen:
    """scripts/rawupstream.py: uvloop + httptools answering one 460-byte chat completion."""
    return start([sys.executable, str(ROOT / "scripts" / "rawupstream.py"), "--port", str(port)], port, cpus)


def naive_proxy(port: int, upstream_port: int, cpus: str | None = None) -> subprocess.Popen:
    """scripts/naiveproxy.py: Starlette + an aiohttp client, no oversight."""
    return start([sys.executable, str(ROOT / "scripts" / "naiveproxy.py"), "--port", str(port),
                  "--upstream", f"http://127.0.0.1:{upstream_port}"], port, cpus)


_NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"""
_PROXY_PASS = """\
    keepalive_requests 100000;
    upstream model {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def nginx_binary() -> str:
    """nginx on PATH or Debian's /usr/sbin/nginx, installed with apt-get (as root) when missing."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("error: the comparison needs nginx: apt-get install -y nginx (or run as root to let it install)")
    print("installing nginx (apt-get install -y nginx) ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                   stdout=subprocess.DEVNULL)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx(directory: Path, port: int, upstream_port: int, cpus: str | None = None) -> subprocess.Popen:
    """nginx `proxy_pass` with upstream keep-alive, one worker, in front of `upstream_port`."""
    return nginx_serving(directory, port, _PROXY_PASS.format(upstream=upstream_port, port=port), cpus)


def nginx_serving(directory: Path, port: int, http: str, cpus: str | None = None) -> subprocess.Popen:
    """nginx, one worker, with `http` (its servers) inside the `http` block, listening on `port`."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(user="user root;\n" if os.geteuid() == 0 else "", dir=directory, http=http))
    return start([nginx_binary(), "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log"),
                  "-g", "daemon off;"], port, cpus, log=directory / "stderr.log")
