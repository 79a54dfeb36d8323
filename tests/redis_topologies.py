"""Real Redis topologies on loopback: a master with replicas watched by Sentinels, and a 3-master Cluster.

Every process is a real `redis-server` (Sentinels are `redis-server --sentinel`); nothing
is simulated. Ports are free ones; files go to the given directory.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import RedisServer, dies_with_tests, free_port, redis_server_binary, wait_port

MASTER_NAME = "gw-master"


@dataclass
class SentinelSet:
    """A master, `replicas` replicas and three sentinels (quorum 2) that fail over after `down_after_ms`.

    `failover_timeout_ms` is short so that an election without a winner (three sentinels
    voting for themselves at once) is tried again after 2 x that, not after 20 s.
    """

    directory: Path
    replicas: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 2000
    master: RedisServer | None = None
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[tuple[int, subprocess.Popen]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def start(self) -> "SentinelSet":
        self.master = RedisServer(free_port(), self.directory / "master",
                                  args=("--logfile", str(self.directory / "master.log"))).start()
        self.servers = [self.master]
        for i in range(self.replicas):
            replica = RedisServer(free_port(), self.directory / f"replica-{i}",
                                  args=("--replicaof", "127.0.0.1", str(self.master.port),
                                        "--logfile", str(self.directory / f"replica-{i}.log")))
            self.servers.append(replica.start())
        self._wait_replicated()
        for i in range(3):
            port = free_port()
            conf = self.directory / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{i}.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n")
            proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, preexec_fn=dies_with_tests())
            wait_port(port, proc)
            self.sentinels.append((port, proc))
        self._wait_sentinels_agree()
        return self

    def master_port(self) -> int:
        """The master the sentinels name now."""
        for port, _ in self.sentinels:
            try:
                host, master = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(master)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        port = self.master_port()
        self.server_on(port).kill()
        return port

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.master_port()
            if port != old_port:
                role = redis.Redis(port=port, socket_timeout=1).role()[0]
                if role in (b"master", "master"):
                    return port
            time.sleep(0.1)
        raise RuntimeError(f"no failover away from {old_port} within {timeout}s")

    def flush(self) -> None:
        client = redis.Redis(port=self.master_port())
        client.flushall()
        client.execute_command("WAIT", self.replicas, 5000)
        client.close()

    def stop(self) -> None:
        for _, proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        for server in self.servers:
            server.stop()

    def _wait_replicated(self, timeout: float = 20.0) -> None:
        client = redis.Redis(port=self.master.port)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = client.info("replication")
            online = [k for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"]
            if len(online) >= self.replicas:  # synced and streaming, not still loading the first copy
                client.close()
                return
            time.sleep(0.05)
        raise RuntimeError("the replicas did not come online")

    def _wait_sentinels_agree(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                known = [redis.Redis(port=port).sentinel_master(MASTER_NAME) for port, _ in self.sentinels]
                if all(int(m.get("num-other-sentinels", 0)) >= 2 and int(m.get("num-slaves", 0)) >= self.replicas
                       for m in known):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not find each other and the replicas")


def _port_with_bus() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@dataclass
class ClusterSet:
    """Three masters (no replicas) in one Redis Cluster, slots spread by `redis-cli --cluster create`."""

    directory: Path
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> "ClusterSet":
        for i in range(3):
            port = _port_with_bus()
            server = RedisServer(port, self.directory / f"node-{i}", args=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / f"node-{i}" / "nodes.conf"),
                "--cluster-node-timeout", "2000"))
            self.servers.append(server.start())
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in self.servers],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [redis.Redis(port=s.port).cluster("info").get("cluster_state") for s in self.servers]
            if all(state == "ok" for state in states):
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def flush(self) -> None:
        for server in self.servers:
            client = redis.Redis(port=server.port)
            client.flushall()
            client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
