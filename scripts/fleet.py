#!/usr/bin/env python3
"""A fleet on one machine: N gateway replicas behind nginx, a Redis topology, load, and faults.

Everything is a real process on 127.0.0.1 and ends with this script, however it ends:
the demo model, Redis (Sentinel: a master, two replicas and three sentinels; a single
append-only redis-server; a 3-master Cluster; or no Redis, the embedded store), N
`gateway serve` processes, each with its own config file and data directory and all
sharing one evidence directory (each takes its own flock'ed `replica-N` slot there), and
nginx in front as the load balancer.

As a module (tests/fleet/test_fleet_script.py):

    with Fleet(replicas=3, store="sentinel", level=3, workdir=path) as fleet:
        fleet.url, fleet.replicas[0].url, fleet.replicas[0].data_dir, fleet.evidence_dir
        fleet.kill_replica(1); fleet.restart_replica(1)
        fleet.kill_redis_master(); fleet.restore_redis()
        fleet.kill_sentinel(); fleet.restart_sentinels()
        fleet.set_level(2)

As a command:

    .venv/bin/python scripts/fleet.py --replicas 3 --store sentinel --rate 200 --seconds 30 --faults replica,master,sentinel
    .venv/bin/python scripts/fleet.py --serve          # start it, print URLs and tokens, stop on Ctrl-C

The command sends open-loop load (a fixed rate, whatever the answers do) through nginx,
kills things with SIGKILL at spread-out times, brings each back a few seconds later, and
prints what held: per phase the statuses and errors, how long answers took to be right
again after each fault, any 5xx that should not be, and whether every ticket answered
202 is still in the review queue. Exit 0 when everything held, 1 otherwise (one
`problem:` line each), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/fleet.py`: the repository root holds tests/ and gateway/
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from tests.redis_topologies import ClusterSet, SentinelSet  # noqa: E402
from tests.support import (DemoModel, GatewayProcess, RedisServer, dies_with_tests, free_port,  # noqa: E402
                           redis_server_binary, start_demo, wait_port)

# The quickstart's tokens (examples/quickstart.yaml): for trials on one machine only.
TOKENS = {"client": "gw_demo_client", "reviewer": "gw_demo_reviewer", "operator": "gw_demo_operator",
          "auditor": "gw_demo_auditor"}
STORES = ("sentinel", "redis", "cluster", "embedded")
FAULTS = ("replica", "master", "sentinel")
MODEL = "demo"
PREDICT = f"/models/{MODEL}/predict"


def nginx_binary() -> str:
    """The nginx to run, found as tests/thirdparty/harness.py finds it: $NGINX_BINARY, else PATH, else /usr/sbin/nginx."""
    chosen = os.environ.get("NGINX_BINARY")
    if chosen:
        found = chosen if os.access(chosen, os.X_OK) else None
    else:
        found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise RuntimeError(f"nginx is not installed{f' at NGINX_BINARY={chosen}' if chosen else ''}: "
                           "apt-get install -y nginx (scripts/test.sh and .ci/run install it)")
    return found


# ------------------------------------------------------------------------------- nginx
NGINX_CONF = """\
# The fleet's load balancer, written by scripts/fleet.py.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # A client's X-Request-Id, else nginx's own: the same id in nginx's log, the gateway's log and the answer.
    map $http_x_request_id $fleet_request_id {{
        ""      $request_id;
        default $http_x_request_id;
    }}
    log_format fleet '$msec $status "$request" $request_time rid=$fleet_request_id '
                     'upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {dir}/access.log fleet;
    client_body_temp_path {dir}/temp/client_body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    client_max_body_size 16m;                  # the gateway's own limit (10 MiB) answers first, with its 413

    upstream gateway {{
{servers}
        keepalive 64;                          # idle keep-alive connections to the replicas
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateway;
            proxy_http_version 1.1;            # keep-alive to the replicas...
            proxy_set_header Connection "";    # ...not the client's Connection header
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Request-Id $fleet_request_id;
            proxy_buffering off;               # answers and SSE streams leave as they come, held streams too
            proxy_read_timeout 300s;           # a held request may wait for its reviewer (hold_wait: 60s)
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout; # a replica that refuses the connection: the next one (never a sent POST)
            proxy_next_upstream_tries 3;
            add_header X-Fleet-Upstream $upstream_addr always;   # which replica answered (several: retried)
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground with its own prefix, pid and temp folders, balancing over `upstreams` (host:port)."""

    directory: Path
    upstreams: list[str]
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in self.upstreams)
        user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would run as nobody, who cannot write here
        return NGINX_CONF.format(user=user, dir=self.directory, servers=servers, port=self.port)

    def start(self) -> "Nginx":
        exe = nginx_binary()
        self.port = self.port or free_port()
        (self.directory / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config_text())
        with open(self.directory / "stderr.log", "ab") as out:
            self.proc = subprocess.Popen([exe, "-p", str(self.directory), "-c", str(conf), "-e",
                                          str(self.directory / "error.log"), "-g", "daemon off;"],
                                         stdout=out, stderr=out, preexec_fn=dies_with_tests())
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{self.errors()}") from None
        return self

    def errors(self) -> str:
        return "".join((self.directory / name).read_text(errors="replace")
                       for name in ("stderr.log", "error.log") if (self.directory / name).exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# ------------------------------------------------------------------------------- the fleet
@dataclass
class Replica:
    """One `gateway serve` process: its own config file and data directory, the fleet's evidence directory."""

    index: int
    port: int
    config: Path
    data_dir: Path
    log_path: Path
    process: GatewayProcess | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.proc is not None and self.process.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.proc.pid if self.alive else None  # type: ignore[union-attr]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def evidence_slots(self) -> list[str]:
        """Every evidence log this replica opened, in order (one per start): from its `evidence log open` lines."""
        slots = []
        for line in self.log().splitlines():
            if '"evidence log open"' in line:
                try:
                    slots.append(json.loads(line)["directory"])
                except (ValueError, KeyError):
                    continue
        return slots


class Fleet:
    """N gateway replicas behind nginx, on a Redis topology (or the embedded store), in front of the demo model."""

    def __init__(self, replicas: int = 3, store: str = "sentinel", level: int = 0, workdir: str | Path | None = None,
                 *, port: int = 0, policy: dict[str, Any] | None = None, demo_args: tuple[str, ...] = ()) -> None:
        if store not in STORES:
            raise ValueError(f"store must be one of {', '.join(STORES)} (got {store!r})")
        if replicas < 1:
            raise ValueError("a fleet needs at least one replica")
        if not 0 <= level <= 4:
            raise ValueError(f"level must be 0..4 (got {level})")
        self.store = store
        self.level = level
        self.count = replicas
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gw-fleet-"))
        self.port = port
        self.policy_overrides = policy or {}
        self.demo_args = demo_args
        self.replicas: list[Replica] = []
        self.demo: DemoModel | None = None
        self.nginx: Nginx | None = None
        self.topology: SentinelSet | ClusterSet | None = None
        self.redis: RedisServer | None = None  # store="redis"
        self._killed_redis: list[RedisServer] = []
        self._killed_sentinels: list[tuple[int, int, list[str]]] = []  # (position, port, argv)

    # the parts ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.nginx is None:
            raise RuntimeError("the fleet is not started")
        return self.nginx.url

    @property
    def evidence_dir(self) -> Path:
        return self.workdir / "evidence"

    @property
    def signing_key_pub(self) -> Path:
        return self.workdir / "evidence-signing.pub"

    @property
    def store_url(self) -> str:
        if self.store == "embedded":
            return "embedded"
        if self.store == "redis":
            assert self.redis is not None
            return self.redis.url
        assert self.topology is not None
        return self.topology.url

    def describe_store(self) -> str:
        return {"sentinel": "Redis Sentinel: a master, 2 replicas, 3 sentinels (quorum 2)",
                "redis": "one redis-server, append-only file fsynced on every write",
                "cluster": "Redis Cluster: 3 masters",
                "embedded": "embedded SQLite, one per replica (no shared state)"}[self.store]

    # lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "Fleet":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Fleet":
        nginx_binary()  # missing nginx: say so before starting anything
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_store()
            self.demo = start_demo(*self.demo_args)
            self._write_signing_key()
            policy = self._write_policy()
            for i in range(self.count):
                self.replicas.append(self._replica(i, policy))
            for replica in self.replicas:  # one after another: replica i takes evidence slot replica-i in a fresh folder
                self._start_replica(replica)
            self.nginx = Nginx(self.workdir / "nginx", [f"127.0.0.1:{r.port}" for r in self.replicas],
                               port=self.port).start()
            self._wait(lambda: self._ready(self.url), 20, "the fleet answering /readyz through nginx")
            self.set_level(self.level, reason="fleet start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything it started: nginx, the replicas, the demo model, Redis."""
        if self.nginx is not None:
            self.nginx.stop()
        for replica in self.replicas:
            if replica.process is not None:
                replica.process.stop()
        if self.demo is not None:
            self.demo.stop()
            self.demo = None
        if self.topology is not None:
            self.topology.stop()
        if self.redis is not None:
            self.redis.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # faults -------------------------------------------------------------------------
    def kill_replica(self, i: int) -> int | None:
        """SIGKILL replica i (a machine lost: no shutdown, its evidence lock freed by the kernel); its exit code."""
        replica = self.replicas[i]
        if replica.process is None:
            return None
        return replica.process.stop(signal.SIGKILL)

    def restart_replica(self, i: int, timeout: float = 20.0) -> Replica:
        """Start replica i again on its port, config and data directory; returns once its /readyz says ready."""
        replica = self.replicas[i]
        if replica.alive:
            raise RuntimeError(f"replica {i} is running")
        replica.restarts += 1
        self._start_replica(replica, timeout)
        return replica

    def kill_redis_master(self) -> int:
        """SIGKILL the Redis master (Sentinel: the one the sentinels name now; redis: the server); returns its port."""
        if self.store == "sentinel":
            assert isinstance(self.topology, SentinelSet)
            port = self.topology.master_port()
            server = self.topology.server_on(port)
            server.kill()
            self._killed_redis.append(server)
            return port
        if self.store == "redis":
            assert self.redis is not None
            self.redis.kill()
            self._killed_redis.append(self.redis)
            return self.redis.port
        raise RuntimeError(f"no master to kill with store={self.store} (sentinel or redis)")

    def master_port(self) -> int | None:
        """The port of the Redis master serving now (None when none does)."""
        if self.store == "sentinel":
            assert isinstance(self.topology, SentinelSet)
            try:
                return self.topology.master_port()
            except RuntimeError:
                return None
        if self.store == "redis":
            return self.redis.port if self.redis is not None and self.redis.proc is not None else None
        return None

    def failed_over(self, old_port: int) -> int | None:
        """Sentinel: the promoted master's port once the sentinels name one other than `old_port` and it says master."""
        import redis

        port = self.master_port()
        if port is None or port == old_port:
            return None
        try:
            role = redis.Redis(port=port, socket_timeout=1).role()[0]
        except redis.RedisError:
            return None
        return port if role in (b"master", "master") else None

    def restore_redis(self) -> list[int]:
        """Start every killed Redis server again: with Sentinel as a replica of the master now (after the failover),
        a single server as it was (it reloads its append-only file). Returns their ports."""
        ports = []
        for server in self._killed_redis:
            if self.store == "sentinel":
                assert isinstance(self.topology, SentinelSet)
                master = self.master_port()
                if master is None or master == server.port:
                    raise RuntimeError("no failover yet: the sentinels still name the killed master")
                again = RedisServer(server.port, server.directory, args=("--replicaof", "127.0.0.1", str(master)))
                again.start()
                self.topology.servers[self.topology.servers.index(server)] = again
            else:
                server.start()
            ports.append(server.port)
        self._killed_redis.clear()
        return ports

    def kill_sentinel(self, i: int | None = None) -> int:
        """SIGKILL sentinel i (default: the first one alive); returns its port."""
        if not isinstance(self.topology, SentinelSet):
            raise RuntimeError(f"no sentinels with store={self.store}")
        alive = [n for n, (_, proc) in enumerate(self.topology.sentinels) if proc.poll() is None]
        if not alive:
            raise RuntimeError("every sentinel is down already")
        n = i if i is not None else alive[0]
        port, proc = self.topology.sentinels[n]
        argv = list(proc.args)  # type: ignore[arg-type]
        proc.kill()
        proc.wait(10)
        self._killed_sentinels.append((n, port, argv))
        return port

    def restart_sentinels(self) -> list[int]:
        """Start every killed sentinel again, from the config file it rewrote (its identity and what it knew)."""
        assert isinstance(self.topology, SentinelSet) or not self._killed_sentinels
        ports = []
        for n, port, argv in self._killed_sentinels:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=dies_with_tests())
            wait_port(port, proc)
            self.topology.sentinels[n] = (port, proc)  # type: ignore[union-attr]
            ports.append(port)
        self._killed_sentinels.clear()
        return ports

    # control ------------------------------------------------------------------------
    def set_level(self, level: int, *, model: str | None = None, reason: str = "fleet") -> dict[str, Any]:
        """Set the global (or a model's) level through the admin API with the operator token.

        A shared store: one call through nginx, which answers once every live replica applied it.
        The embedded store keeps one state per replica, so each replica is told itself."""
        path = "/admin/oversight/global" if model is None else f"/admin/oversight/models/{model}"
        targets = [r.url for r in self.replicas if r.alive] if self.store == "embedded" else [self.url]
        result: dict[str, Any] = {}
        for base in targets:
            r = httpx.put(base + path, json={"level": level, "reason": reason}, headers=self.auth("operator"), timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"setting level {level} at {base}: {r.status_code} {r.text}")
            result = r.json()
            if result.get("unconfirmed"):
                raise RuntimeError(f"level {level}: not confirmed by {result['unconfirmed']}")
        if model is None:
            self.level = level
        return result

    def auth(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {TOKENS[role]}"}

    def ready(self, i: int) -> bool:
        return self._ready(self.replicas[i].url)

    # inside -------------------------------------------------------------------------
    def _start_store(self) -> None:
        if self.store == "sentinel":
            self.topology = SentinelSet(self.workdir / "redis", replicas=2, down_after_ms=1000).start()
        elif self.store == "cluster":
            self.topology = ClusterSet(self.workdir / "redis").start()
        elif self.store == "redis":
            redis_server_binary()
            self.redis = RedisServer(free_port(), self.workdir / "redis",
                                     args=("--appendonly", "yes", "--appendfsync", "always")).start()

    def _write_signing_key(self) -> None:
        """One checkpoint signing key for the fleet: every replica's log verifies with evidence-signing.pub."""
        from gateway.evidence import generate_signing_key, write_keypair

        private = self.workdir / "evidence-signing.key"
        if not private.exists():
            write_keypair(generate_signing_key(), private, self.signing_key_pub)

    def _write_policy(self) -> Path:
        # One operator may lower a level (a trial fleet has one operator token); the level the fleet starts at.
        policy = {"extends": str(ROOT / "policies" / "default.yaml"), "version": "fleet-1",
                  "oversight": {"initial_level": self.level, "two_person_lowering": False}}
        for key, value in self.policy_overrides.items():
            policy[key] = {**policy.get(key, {}), **value} if isinstance(value, dict) else value
        path = self.workdir / "policy.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        return path

    def _replica(self, i: int, policy: Path) -> Replica:
        directory = self.workdir / f"replica-{i}"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        assert self.demo is not None
        config = {
            "listen": {"host": "127.0.0.1", "port": port},
            "data_dir": str(directory / "data"),
            "store": self.store_url,
            "policy": str(policy),
            "logging": {"level": "info", "access_log": True},
            "evidence": {"directory": str(self.evidence_dir), "signing_key": str(self.workdir / "evidence-signing.key")},
            "models": {MODEL: {"versions": {"v1": {"upstream": self.demo.url}}}},
            "tokens": [{"id": f"demo-{role}", "role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}
                       for role, token in TOKENS.items()],
        }
        path = directory / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return Replica(i, port, path, directory / "data", directory / "gateway.log")

    def _start_replica(self, replica: Replica, timeout: float = 20.0) -> None:
        replica.process = GatewayProcess(replica.config, replica.port, log_path=replica.log_path)
        try:
            replica.process.start(timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"replica {replica.index} did not start ({exc}); the end of {replica.log_path}:\n"
                               + "\n".join(replica.log().splitlines()[-5:])) from None
        self._wait(lambda: self._ready(replica.url) or not replica.alive, timeout, f"replica {replica.index} ready")
        if not replica.alive:
            raise RuntimeError(f"replica {replica.index} exited with {replica.process.proc.returncode}:\n"  # type: ignore[union-attr]
                               + "\n".join(replica.log().splitlines()[-10:]))

    @staticmethod
    def _ready(base: str) -> bool:
        try:
            return httpx.get(base + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @staticmethod
    def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise RuntimeError(f"{what}: not within {timeout}s")


# ------------------------------------------------------------------------------- load
@dataclass
class Answer:
    """One request of the load, as its client saw it (times are time.monotonic())."""

    i: int
    due: float  # when the schedule said to send it
    sent: float = 0.0
    done: float = 0.0
    status: int = 0  # 0: no answer (see `error`)
    error: str | None = None  # what the client met: refused, reset, timeout...
    error_type: str | None = None  # the gateway's {"error": {"type"}}
    level: str | None = None  # X-Oversight-Level
    route: str | None = None  # X-Oversight-Route
    request_id: str = ""
    gateway_id: str | None = None  # X-Request-Id on the answer: the gateway's (nginx's own pages have none)
    upstream: str | None = None  # X-Fleet-Upstream: the replica(s) nginx tried
    ticket: str | None = None

    @property
    def by_nginx(self) -> bool:
        """An answer nginx made itself (no replica answered it)."""
        return self.status > 0 and self.gateway_id is None


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers (lower-case names), body and whether the connection may be kept."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return status, headers, b"".join(parts), keep
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"])), keep
    return status, headers, await reader.read(), False


class Client:
    """A small keep-alive HTTP/1.1 client on asyncio streams: cheap enough for hundreds of requests a second."""

    def __init__(self, base: str, *, timeout: float = 15.0, connections: int = 256) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(connections)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      answer: Answer | None = None) -> Answer:
        answer = answer or Answer(0, time.monotonic())
        async with self.slots:
            answer.sent = time.monotonic()
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            data = (f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{head}"
                    f"content-length: {len(body)}\r\n\r\n").encode() + body
            conn = self.idle.pop() if self.idle else None
            try:
                if conn is None:
                    conn = _Conn(*await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout))
                conn.writer.write(data)
                status, got, content, keep = await asyncio.wait_for(_read_answer(conn.reader), self.timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    asyncio.TimeoutError) as exc:
                answer.done = time.monotonic()
                answer.error = _describe(exc)
                if conn is not None:
                    conn.close()
                return answer
            answer.done = time.monotonic()
            if keep:
                self.idle.append(conn)
            else:
                conn.close()
        answer.status = status
        answer.level = got.get("x-oversight-level")
        answer.route = got.get("x-oversight-route")
        answer.gateway_id = got.get("x-request-id")
        answer.upstream = got.get("x-fleet-upstream")
        if got.get("content-type", "").startswith("application/json") and content:
            try:
                doc = json.loads(content)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                if isinstance(doc.get("error"), dict):
                    answer.error_type = doc["error"].get("type")
                if status == 202 and isinstance(doc.get("ticket"), str):
                    answer.ticket = doc["ticket"]
        return answer

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-answer"
    return type(exc).__name__


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class Load:
    """Open-loop load through one URL: request i is due at start + i/rate, whatever earlier answers did.

    Runs on its own thread and event loop (faults are injected from the main thread, where
    processes must be started to die with it). Each request is a distinct `POST /models/demo/predict`
    with its own X-Request-Id, so no retry ever joins another's ticket.
    """

    def __init__(self, url: str, rate: float, *, token: str = TOKENS["client"], timeout: float = 15.0,
                 connections: int = 256, path: str = PREDICT) -> None:
        self.url, self.rate, self.token, self.timeout, self.connections, self.path = \
            url, rate, token, timeout, connections, path
        self.run_id = os.urandom(3).hex()
        self.answers: list[Answer] = []
        self.watch: MasterWatch | None = None  # set by run_faults with Sentinel
        self.started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Load":
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="fleet-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        """Stop sending; wait for the answers in flight (at most the request timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 10)
        return self.answers

    def _main(self) -> None:
        loop = _event_loop()
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()

    async def _run(self) -> None:
        client = Client(self.url, timeout=self.timeout, connections=self.connections)
        pending: set[asyncio.Task] = set()
        i = 0
        while not self._stop.is_set():
            due = self.started + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            answer = Answer(i, due, request_id=f"fleet-{self.run_id}-{i}")
            self.answers.append(answer)
            task = asyncio.create_task(self._one(client, answer))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if pending:
            await asyncio.wait(pending)
        client.close()

    async def _one(self, client: Client, answer: Answer) -> None:
        body = json.dumps({"applicant": {"id": answer.request_id, "group": "AB"[answer.i % 2],
                                         "income": 30000 + answer.i % 50000}}).encode()
        await client.request("POST", self.path, {"content-type": "application/json",
                                                 "authorization": f"Bearer {self.token}",
                                                 "x-request-id": answer.request_id}, body, answer)


def check_tickets(bases: list[str], tickets: list[str], *, concurrency: int = 16) -> dict[str, int]:
    """Which tickets the review queue still has: {ticket: status of GET /review/tickets/{id}} (200: present).

    Several bases (embedded stores, one per replica): present if any of them has it."""

    async def run() -> dict[str, int]:
        clients = [Client(b, timeout=15, connections=concurrency) for b in bases]
        gate = asyncio.Semaphore(concurrency)
        found: dict[str, int] = {}

        async def one(ticket: str) -> None:
            async with gate:
                status = 0
                for client in clients:
                    seen = await client.request("GET", f"/review/tickets/{ticket}",
                                                {"authorization": f"Bearer {TOKENS['reviewer']}"})
                    status = seen.status
                    if status == 200:
                        break
                found[ticket] = status

        await asyncio.gather(*(one(t) for t in tickets))
        for client in clients:
            client.close()
        return found

    loop = _event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


# ------------------------------------------------------------------------------- faults and what held
@dataclass
class Phase:
    """From one fault (or the start) to the next: what was done, and the answers that ended meanwhile."""

    name: str
    kind: str  # "start", "replica", "master", "sentinel"
    at: float  # when the fault began (monotonic)
    fault_done: float = 0.0  # when the faulted process was dead
    target: str | None = None  # a killed replica's address (host:port), as nginx names it
    detail: str = ""
    restored: str = ""
    answers: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovered_s: float | None = None
    disrupted: int = 0


def expected_statuses(level: int) -> set[int]:
    """What a healthy fleet answers `POST /models/demo/predict` with at a level (no Prefer: a held one is 202)."""
    return {200} if level <= 1 else {200, 202} if level == 2 else {202}


def tolerated(answer: Answer, phase: Phase) -> bool:
    """A wrong answer the fault explains: what the gateway promises under it, not a defect.

    - Redis master lost: the gateway fails closed, `503 store_unavailable` (nothing that needs the store can
      happen) or, while the state is unknown but a ticket can be written, a level-4 human task (202, level 4).
    - A replica killed: nginx's own 502 for a request it had sent to that replica over a connection open when
      the replica died (nginx never sends a POST twice: the dead replica may have acted on it). A connection
      refused is not one: nginx sends that request to the next replica.
    """
    if phase.kind == "master":
        return (answer.status == 503 and answer.error_type == "store_unavailable") or \
               (answer.status == 202 and answer.level == "4")
    if phase.kind == "replica":
        return answer.status == 502 and answer.by_nginx and served_by(answer) == phase.target \
            and answer.done >= phase.at and answer.sent < phase.fault_done + 1.0
    return False


def served_by(answer: Answer) -> str | None:
    """The replica (host:port) nginx got the answer from, or failed on: the last one it tried."""
    return answer.upstream.split(",")[-1].strip() if answer.upstream else None


def describe_answer(answer: Answer, level: int | None = None) -> str:
    """`202`, `503 store_unavailable`, `502 from nginx`, `202 at level 4` (when not the fleet's level)..."""
    if answer.status == 0:
        return f"no answer ({answer.error})"
    what = f"{answer.status}"
    if answer.error_type:
        what += f" {answer.error_type}"
    elif answer.by_nginx:
        what += " from nginx"
    if level is not None and answer.level is not None and answer.level != str(level):
        what += f" at level {answer.level}"
    return what


def judge(phases: list[Phase], level: int) -> None:
    """Fill in each phase's recovery time and problems."""
    good = expected_statuses(level)
    for phase in phases:
        answers = sorted(phase.answers, key=lambda a: a.due)
        bad = [a for a in answers if a.status not in good]
        phase.disrupted = len(bad)
        if not bad:
            phase.recovered_s = 0.0 if phase.kind != "start" else None
        else:
            last = answers.index(bad[-1])
            if last + 1 < len(answers):
                phase.recovered_s = max(0.0, answers[last + 1].due - phase.at)
            else:
                phase.problems.append(f"{phase.name}: answers were still wrong when the phase ended "
                                      f"(last: {describe_answer(bad[-1], level)}, request {bad[-1].request_id})")
        wrong: dict[str, list[Answer]] = {}
        for a in bad:
            if not tolerated(a, phase):
                wrong.setdefault(describe_answer(a, level), []).append(a)
        for what, items in sorted(wrong.items()):
            ids = ", ".join(a.request_id for a in items[:3])
            kind = "a 5xx that should not be" if 500 <= items[0].status < 600 else "unexpected"
            phase.problems.append(f"{phase.name}: {len(items)} answer(s) {what} ({kind}; expected "
                                  f"{'/'.join(map(str, sorted(good)))}; e.g. {ids})")


def counts(answers: list[Answer], key: Callable[[Answer], Any]) -> str:
    tally: dict[Any, int] = {}
    for a in answers:
        k = key(a)
        if k is not None:
            tally[k] = tally.get(k, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], str(kv[0])))) or "-"


class MasterWatch:
    """Sentinel: which master the sentinels name, sampled every 50 ms on a thread of its own, and for each new one
    when it first had a replica online (what a write needs to be acknowledged, `store_durability.replicas`)."""

    def __init__(self, fleet: Fleet, interval: float = 0.05) -> None:
        self.fleet, self.interval = fleet, interval
        self.masters: list[list[Any]] = []  # [since, port, first time a replica was online or None]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-master-watch", daemon=True)

    def start(self) -> "MasterWatch":
        if self.fleet.store == "sentinel":
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            port = self.fleet.master_port()
            if port is not None and (not self.masters or self.masters[-1][1] != port):
                self.masters.append([time.monotonic(), port, None])
            if self.masters and self.masters[-1][2] is None:
                try:
                    info = redis.Redis(port=self.masters[-1][1], socket_timeout=1).info("replication")
                    online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                              and v.get("state") == "online"]
                    if info.get("role") == "master" and online:
                        self.masters[-1][2] = time.monotonic()
                except redis.RedisError:
                    pass
            self._stop.wait(self.interval)

    def describe(self, t0: float) -> str:
        parts = []
        for n, (since, port, online) in enumerate(self.masters):
            when = "at the start" if n == 0 else f"from +{since - t0:.1f}s"
            ready = f", a replica online {online - since:.1f}s later" if online is not None and n else \
                ("" if online is not None else ", no replica online")
            parts.append(f":{port} {when}{ready}")
        return "; ".join(parts)


def run_faults(fleet: Fleet, *, rate: float, seconds: float, faults: list[str], say: Callable[[str], None] = print,
               restore_after: float | None = None) -> tuple[list[Phase], list[str], Load]:
    """Load through nginx for `seconds`, the faults at even intervals, each undone `restore_after` s later.

    Returns the phases, the problems found (one line each) and the load (its answers)."""
    gap = seconds / (len(faults) + 1)
    restore_after = restore_after if restore_after is not None else min(3.0, gap / 2)
    watch = MasterWatch(fleet).start()
    load = Load(fleet.url, rate).start()
    load.watch = watch
    t0 = load.started
    phases = [Phase("before any fault", "start", t0)]
    pending: list[tuple[float, str, Any]] = [(t0 + gap * (k + 1), "fault", (k, name)) for k, name in enumerate(faults)]
    pending.append((t0 + seconds, "end", None))
    problems: list[str] = []
    failovers: list[tuple[Phase, int]] = []  # master kills whose failover is not seen yet
    replica_kills = 0
    sentinel_kills = 0
    while pending:
        pending.sort(key=lambda p: p[0])
        when, what, arg = pending[0]
        for phase, old in list(failovers):
            promoted = fleet.failed_over(old)
            if promoted is not None:
                phase.detail = f"sentinels promoted :{promoted} at +{time.monotonic() - phase.at:.1f}s"
                failovers.remove((phase, old))
        now = time.monotonic()
        if now < when:
            time.sleep(min(0.05, when - now))
            continue
        pending.pop(0)
        if what == "end":
            break
        if what == "fault":
            k, name = arg
            phase = Phase("", name, time.monotonic())
            if name == "replica":
                i = (1 + replica_kills) % fleet.count
                replica_kills += 1
                pid = fleet.replicas[i].pid
                fleet.kill_replica(i)
                phase.name = f"kill -9 replica {i}"
                phase.target = f"127.0.0.1:{fleet.replicas[i].port}"
                phase.detail = f"pid {pid}, port {fleet.replicas[i].port}"
                pending.append((phase.at + restore_after, "restart_replica", (phase, i)))
            elif name == "master":
                port = fleet.kill_redis_master()
                phase.name = f"kill -9 redis master :{port}"
                pending.append((phase.at + restore_after, "restore_redis", (phase, port)))
                if fleet.store == "sentinel":
                    failovers.append((phase, port))
            elif name == "sentinel":
                n = sentinel_kills % 3
                sentinel_kills += 1
                port = fleet.kill_sentinel(n)
                phase.name = f"kill -9 sentinel :{port}"
                pending.append((phase.at + restore_after, "restart_sentinels", (phase, port)))
            phase.fault_done = time.monotonic()
            phases.append(phase)
            say(f"  {phase.at - t0:5.1f}s  {phase.name}")
            continue
        phase, detail = arg
        if what == "restart_replica":
            started = time.monotonic()
            try:
                replica = fleet.restart_replica(detail)
            except RuntimeError as exc:
                problems.append(f"{phase.name}: the replica did not come back: {exc}")
                continue
            phase.restored = f"restarted at +{started - phase.at:.1f}s, ready in {time.monotonic() - started:.1f}s"
            slots = [Path(s).name for s in replica.evidence_slots()]
            if len(slots) >= 2 and slots[-1] != slots[-2]:  # its slot was held, e.g. by a replica adopting the log
                phase.restored += f", writing {slots[-1]} (its {slots[-2]} was taken)"
            elif len(slots) >= 2:
                phase.restored += f", continued {slots[-1]}"
        elif what == "restore_redis":
            if fleet.store == "sentinel":
                promoted = fleet.failed_over(detail)
                if promoted is None:
                    if time.monotonic() - phase.at > 30:
                        problems.append(f"{phase.name}: the sentinels promoted no replica within 30 s")
                        continue
                    pending.append((time.monotonic() + 0.1, what, arg))  # not yet: the failover comes first
                    continue
            started = time.monotonic()
            fleet.restore_redis()
            phase.restored = (f"restarted at +{started - phase.at:.1f}s"
                              + (" as a replica" if fleet.store == "sentinel" else " (append-only file reloaded)"))
        elif what == "restart_sentinels":
            started = time.monotonic()
            fleet.restart_sentinels()
            phase.restored = f"restarted at +{started - phase.at:.1f}s"
        say(f"  {time.monotonic() - t0:5.1f}s  {phase.name}: {phase.restored}")
    answers = load.stop()
    watch.stop()
    # An answer belongs to the phase it ended in: one in flight when a fault began is that fault's.
    for a, nxt in zip(phases, phases[1:] + [None]):
        end = nxt.at if nxt is not None else float("inf")
        a.answers = [x for x in answers if a.at <= x.done < end or (a.kind == "start" and x.done < a.at)]
    judge(phases, fleet.level)
    for phase in phases:
        problems.extend(phase.problems)
    for replica in fleet.replicas:
        if not replica.alive:
            problems.append(f"replica {replica.index} is not running at the end (exit "
                            f"{replica.process.proc.returncode if replica.process and replica.process.proc else '?'})")
    return phases, problems, load


def report(fleet: Fleet, phases: list[Phase], problems: list[str], load: Load, *, seconds: float,
           say: Callable[[str], None] = print) -> list[str]:
    """Print what held; returns every problem (the ones found while running, and the ticket check's)."""
    problems = list(problems)
    answers = load.answers
    say("")
    say(f"{'phase':<30} {'at':>6} {'requests':>8}  {'statuses':<44} {'recovered':>9}")
    for phase in phases:
        statuses = counts(phase.answers, lambda a: describe_answer(a, fleet.level))
        at = f"{phase.at - load.started:.1f}s"
        rec = "-" if phase.recovered_s is None else f"{phase.recovered_s:.2f}s"
        if phase.kind != "start" and phase.recovered_s is None:
            rec = "never"
        say(f"{phase.name:<30} {at:>6} {len(phase.answers):>8}  {statuses:<44} {rec:>9}")
        notes = "; ".join(x for x in (phase.detail, phase.restored) if x)
        if notes:
            say(f"{'':<30} {'':>6} {'':>8}  {notes}")
    answered = [a for a in answers if a.status]
    latencies = sorted((a.done - a.due) * 1000 for a in answered)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    span = max((a.due for a in answers), default=load.started) - load.started
    say("")
    say(f"load: {len(answers)} requests at {len(answers) / span if span > 0 else 0:.1f}/s (asked {load.rate:g}/s) "
        f"through nginx {fleet.url}; {len(answered)} answered; latency from the scheduled send p50 {pct(0.5):.1f} ms, "
        f"p99 {pct(0.99):.1f} ms, max {latencies[-1] if latencies else float('nan'):.1f} ms")
    errors = counts([a for a in answers if a.error_type or a.error], lambda a: a.error_type or a.error)
    say(f"errors: {errors}")
    fives = [p for p in problems if "a 5xx that should not be" in p]
    say(f"unexpected 5xx: {'none' if not fives else f'{len(fives)} kind(s), below'}")
    tickets = [a.ticket for a in answers if a.ticket]
    if tickets:
        bases = [r.url for r in fleet.replicas if r.alive] if fleet.store == "embedded" else [fleet.url]
        seen = check_tickets(bases, tickets)
        gone = [t for t, status in seen.items() if status != 200]
        say(f"tickets: {len(tickets)} answered 202, {len(tickets) - len(gone)} still in the review queue")
        if gone:
            lost = set(gone)
            times = sorted(a.done - load.started for a in answers if a.ticket in lost)
            problems.append(f"tickets: {len(gone)} of {len(tickets)} answered 202 are gone, answered between "
                            f"+{times[0]:.1f}s and +{times[-1]:.1f}s (e.g. {', '.join(gone[:3])}: {seen[gone[0]]})")
    elif fleet.level >= 3:
        say("tickets: none answered 202")
    watch = load.watch
    if watch is not None and watch.masters:
        say(f"redis master: {watch.describe(load.started)}")
        failovers = len(watch.masters) - 1
        kills = sum(1 for p in phases if p.kind == "master")
        if failovers > kills:
            problems.append(f"redis: {failovers} failovers for {kills} master kill(s): {watch.describe(load.started)}")
    layout = []
    for replica in fleet.replicas:
        slots = [Path(s).name for s in replica.evidence_slots()]
        layout.append(f"replica {replica.index} -> {'/'.join(dict.fromkeys(slots)) or '?'}")
    say(f"evidence: {fleet.evidence_dir} ({', '.join(layout)}); checkpoints signed by {fleet.signing_key_pub.name}")
    if problems:
        for line in problems:
            say(f"problem: {line}")
    else:
        say("held: every answer was the expected one or one its fault explains, and every phase recovered")
    return problems


# ------------------------------------------------------------------------------- the command
def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/fleet.py", description=__doc__.split("\n\n")[0],
        epilog="Exit 0: everything held; 1: something did not (one `problem:` line each); 2: usage.")
    parser.add_argument("--replicas", type=int, default=3, help="gateway replicas behind nginx (default %(default)s)")
    parser.add_argument("--store", choices=STORES, default="sentinel", help="control state store (default %(default)s)")
    parser.add_argument("--level", type=int, default=None, choices=range(5), metavar="0-4",
                        help="global oversight level (default: 3, every answer held with a ticket; 0 with --serve)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, open loop (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load runs (default %(default)s)")
    parser.add_argument("--faults", default="replica,master,sentinel",
                        help="comma-separated, in order, spread evenly over the run: replica, master, sentinel; "
                             "'' for none (default %(default)s)")
    parser.add_argument("--restore-after", type=float, default=None,
                        help="seconds after each fault to bring the killed process back (default: min(3, half a phase))")
    parser.add_argument("--port", type=int, default=0, help="nginx's port (default: a free one)")
    parser.add_argument("--workdir", help="where configs, data, evidence and logs go (default: a temporary folder, "
                                          "removed at the end)")
    parser.add_argument("--serve", action="store_true", help="only start the fleet, print URLs and tokens, stop on Ctrl-C")
    args = parser.parse_args(argv)
    if args.level is None:
        args.level = 0 if args.serve else 3
    args.fault_list = [] if args.serve else [f.strip() for f in args.faults.split(",") if f.strip()]
    for name in args.fault_list:
        if name not in FAULTS:
            parser.error(f"--faults: unknown fault {name!r} (one of {', '.join(FAULTS)})")
        if name == "master" and args.store not in ("sentinel", "redis"):
            parser.error(f"--faults master needs --store sentinel or redis (a {args.store} store has no master to kill)")
        if name == "sentinel" and args.store != "sentinel":
            parser.error("--faults sentinel needs --store sentinel")
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.store == "embedded" and args.replicas > 1:
        print("note: the embedded store keeps one state per replica: levels are set on each, and a ticket lives on "
              "the replica that took it", file=sys.stderr)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    return args


def _serve(fleet: Fleet) -> None:
    say = print
    say(f"fleet: {fleet.count} gateway replica(s) behind nginx, level {fleet.level}, store: {fleet.describe_store()}")
    say(f"  nginx        {fleet.url}        <- send requests here")
    for r in fleet.replicas:
        say(f"  replica {r.index}    {r.url}  config {r.config}  data {r.data_dir}")
    say(f"  demo model   {fleet.demo.url if fleet.demo else '?'}")
    say(f"  store        {fleet.store_url}")
    say(f"  evidence     {fleet.evidence_dir}  (verify: .venv/bin/gateway evidence verify "
        f"{fleet.evidence_dir}/replica-0 --key {fleet.signing_key_pub})")
    say("  tokens       " + ", ".join(f"{role} {token}" for role, token in TOKENS.items()))
    say(f"  try          curl -si {fleet.url}{PREDICT} -H 'authorization: Bearer {TOKENS['client']}' "
        "-d '{\"applicant\": {\"id\": \"a-1\"}}'")
    say("Ctrl-C stops everything.")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    where = Path(args.workdir).resolve() if args.workdir else None
    print(f"starting: nginx, {args.replicas} replica(s), store {args.store}, the demo model"
          + (f", in {where}" if where else ""), flush=True)
    try:
        with Fleet(args.replicas, args.store, args.level, where, port=args.port) as fleet:
            if args.serve:
                _serve(fleet)
                return 0
            print(f"fleet: {args.replicas} replica(s) behind nginx {fleet.url}; {fleet.describe_store()}; level "
                  f"{args.level}; {args.rate:g} req/s for {args.seconds:g}s; faults: "
                  f"{', '.join(args.fault_list) or 'none'}", flush=True)
            phases, problems, load = run_faults(fleet, rate=args.rate, seconds=args.seconds, faults=args.fault_list,
                                                restore_after=args.restore_after,
                                                say=lambda line: print(line, flush=True))
            problems = report(fleet, phases, problems, load, seconds=args.seconds)
            return 1 if problems else 0
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0 if args.serve else 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
