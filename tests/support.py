"""Real servers for tests: redis-server, gateway processes, in-process gateways on loopback.

Nothing here fakes a component: Redis is a real `redis-server` on a free port, gateways
listen on real sockets, and configs are real files validated like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
# Interop vectors made by other tools (`model_signing` 1.1.1): the shared folder beside the
# checkout when there is one, else the byte-identical copy in tests/vectors (a clean clone
# has only that; tests/integrity/test_vectors_copy.py keeps the two the same).
SHARED_VECTORS = ROOT.parent / "shared" / "vectors" / "oms"
VECTORS = Path(os.environ.get("OMS_VECTORS") or (SHARED_VECTORS if SHARED_VECTORS.is_dir() else ROOT / "tests" / "vectors" / "oms"))

TOKENS = {
    "client": "gw_test_client",
    "client2": "gw_test_client_two",
    "reviewer": "gw_test_reviewer",
    "reviewer2": "gw_test_reviewer_two",
    "operator": "gw_test_operator",
    "operator2": "gw_test_operator_two",
    "auditor": "gw_test_auditor",
}
_ROLE_OF = {"client2": "client", "reviewer2": "reviewer", "operator2": "operator"}


def _end_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def dies_with_tests():
    """`preexec_fn` for every server a test starts: the kernel ends it when the test run ends, however it ends.

    The kernel ties this to the thread that starts the process, so a server started from a
    worker thread (which ends long before the test) is left to its test's own cleanup.
    """
    return _end_with_parent if threading.current_thread() is threading.main_thread() else None


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[name]}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


# redis-server ----------------------------------------------------------------------
def redis_server_binary() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (scripts/test.sh does it)")
    return exe


@dataclass
class RedisServer:
    port: int
    directory: Path
    proc: subprocess.Popen | None = None
    args: tuple[str, ...] = ()  # more redis-server options, e.g. ("--appendonly", "yes") or ("--replicaof", ...)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dies_with_tests(),
        )
        wait_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: a machine lost, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()


# config files ----------------------------------------------------------------------
def write_config(
    directory: Path,
    models: dict[str, Any],
    *,
    store: str = "embedded",
    policy: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    name: str = "gateway.yaml",
    model_settings: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A config file for `models` ({name: {version: upstream_url or version dict}}).

    `model_settings` adds fields beside a model's `versions` ({name: {"versions_api": ...}}).
    """
    directory.mkdir(parents=True, exist_ok=True)
    policy_path = directory / f"{Path(name).stem}-policy.yaml"
    policy_path.write_text(yaml.safe_dump({"extends": str(DEFAULT_POLICY), **(policy or {})}))
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "data_dir": str(directory / "data"),
        "store": store,
        "policy": str(policy_path),
        "logging": {"level": "info", "access_log": True},
        "tokens": [
            {"id": f"test-{name}", "role": _ROLE_OF.get(name, name), "sha256": hashlib.sha256(token.encode()).hexdigest()}
            for name, token in TOKENS.items()
        ],
        "models": {
            model: {"versions": {v: (spec if isinstance(spec, dict) else {"upstream": spec}) for v, spec in versions.items()},
                    **(model_settings or {}).get(model, {})}
            for model, versions in models.items()
        },
    }
    for key, value in (extra or {}).items():
        config[key] = value
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# gateways --------------------------------------------------------------------------
@dataclass
class InProcessGateway:
    """A gateway served by uvicorn on a loopback port, inside the test's event loop."""

    url: str
    gateway: Any
    client: httpx.AsyncClient
    server: Any = field(repr=False, default=None)


@asynccontextmanager
async def serve_in_process(config_path: Path, client_verify: Any = True, *,
                           keep_alive: float | None = None) -> AsyncIterator[InProcessGateway]:
    """`keep_alive`: the server's idle keep-alive timeout in seconds (default uvicorn's, 5 s)."""
    import uvicorn

    from gateway.app import GatewayApp
    from gateway.serving import server_config
    from gateway.wiring import Gateway

    gw = Gateway.from_files(config_path)
    port = free_port()
    config = server_config(GatewayApp(gw), port=port)
    config.loop = "none"  # run inside the test's event loop
    if keep_alive is not None:
        config.timeout_keep_alive = keep_alive
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway did not start")
        await asyncio.sleep(0.01)
    scheme = "https" if gw.config.listen.tls else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    client = httpx.AsyncClient(base_url=url, timeout=30, verify=client_verify)
    try:
        yield InProcessGateway(url, gw, client, server)
    finally:
        await client.aclose()  # before the server: an open keep-alive connection delays its shutdown
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@dataclass
class GatewayProcess:
    """A gateway in its own process (`python -m gateway serve`)."""

    config: Path
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict[str, str] | None = None  # added to (or, with None values, removed from) this process's environment

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "GatewayProcess":
        self.log_path = self.log_path or Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config), "--port", str(self.port)],
            stdout=log, stderr=log, env=self._environment(), preexec_fn=dies_with_tests(),
        )
        wait_port(self.port, self.proc, timeout)
        return self

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name, value in (self.env or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


async def kept_state(gateway: Any) -> dict[str, Any]:
    """What a running gateway keeps that a request could change: control documents and their epoch, the audit
    trail, the stored collections, and the evidence log's size and legal holds. Equal before and after a refused
    request, or the refusal changed something."""
    from gateway.console.session import SESSIONS
    from gateway.incidents.manager import CAUSES, INCIDENTS
    from gateway.incidents.notify import OUTBOX
    from gateway.oversight.levels import CHANGES
    from gateway.review.queue import TICKETS

    store = gateway.store
    snapshot = await store.snapshot()
    log = gateway.evidence.log if gateway.evidence is not None else None
    return {
        "epoch": snapshot.epoch,
        "docs": snapshot.docs,
        "audit": await store.audit_log(limit=10_000),
        "collections": {name: await store.query(name, limit=10_000)
                        for name in (TICKETS, CHANGES, INCIDENTS, CAUSES, OUTBOX, SESSIONS, "feedback")},
        "evidence_records": log.size if log is not None else None,
        "legal_holds": log.legal_holds() if log is not None else None,
    }


async def console_session(client: httpx.AsyncClient, who: str) -> dict[str, str]:
    """Sign in to the console as `who` over HTTP: headers carrying the session cookie and its CSRF token."""
    r = await client.post("/console/login", data={"token": TOKENS[who]}, follow_redirects=False)
    assert r.status_code == 303, r.text
    cookie = {"cookie": "gw_console=" + r.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]}
    html = (await client.get("/console/review", headers={**cookie, "accept": "text/html"})).text
    return {**cookie, "x-csrf-token": html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]}


async def eventually(check, timeout: float = 5.0, interval: float = 0.02):
    """Poll an async `check()` until it returns a truthy value (which is returned)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


# the demo model --------------------------------------------------------------------
@dataclass
class DemoModel:
    """The demo model in its own process; `url` comes from its start line."""

    proc: subprocess.Popen
    url: str
    start_line: str = ""

    def stop(self) -> str:
        """Stop it; returns what it wrote on stderr (when started with `keep_stderr`)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return stderr

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_demo/stats", timeout=5).json()

    def configure(self, **switches: Any) -> None:
        httpx.post(f"{self.url}/_demo/config", json=switches, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_demo/reset", timeout=5).raise_for_status()


def start_demo(*args: str, timeout: float = 15.0, keep_stderr: bool = False) -> DemoModel:
    """Start `python -m gateway demo-model --port 0` and wait for its start line (the kernel picks the port)."""
    import select

    from gateway.demo import START_LINE_RE

    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo-model", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if keep_stderr else subprocess.DEVNULL, text=True,
                            preexec_fn=dies_with_tests())
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    match = START_LINE_RE.match(line)
    if not match:
        proc.kill()
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise RuntimeError(f"demo model did not start (first line: {line!r}; exit {proc.poll()}) {err}")
    return DemoModel(proc, match["url"], line)


def gateway_factory(tmp_path: Path, models: dict[str, Any]):
    """`async with make(policy=..., store=...) as gw:` — a fresh in-process gateway per call."""
    count = 0

    @asynccontextmanager
    async def make(*, policy: dict[str, Any] | None = None, store: str = "embedded", extra: dict[str, Any] | None = None,
                   directory: Path | None = None, model_settings: dict[str, dict[str, Any]] | None = None):
        nonlocal count
        count += 1
        config = write_config(directory or tmp_path / f"gw{count}", models, store=store, policy=policy, extra=extra,
                              model_settings=model_settings)
        async with serve_in_process(config) as running:
            yield running

    return make
