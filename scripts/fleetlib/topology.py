"""The fleet's processes: the demo model, the Redis topology, N gateway replicas, nginx in front."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

from tests.redis_topologies import ClusterSet, SentinelSet
from tests.support import (DemoModel, GatewayProcess, RedisServer, dies_with_tests, free_port,
                           redis_server_binary, start_demo, wait_port)
from scripts.fleetlib.common import MODEL, ROOT, STORES, TOKENS
from scripts.fleetlib.nginx import Nginx, nginx_binary

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


