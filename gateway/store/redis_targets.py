"""Which Redis a store URL names, and a client for it: one server, a Sentinel-watched master, or a Cluster.

    redis://[:password@]host:6379/0            one server (rediss:// for TLS, unix:///path.sock)
    redis+sentinel://[:password@]s1:26379,s2:26379,s3:26379/MASTER_SET[/db]
    redis+cluster://[:password@]node1:6379,node2:6379

With Sentinel the client asks the sentinels for the master on every new connection, so
after a failover it finds the promoted one by itself. With Cluster every key of one
gateway carries one hash tag (`{gw}:`), so the Lua scripts that touch several keys stay on
one slot; the gateway's data is small, and atomic multi-key writes matter more to it than
spreading one gateway's keys over the shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: str  # "single", "sentinel" or "cluster"
    url: str  # as given (it may hold a password: never log it, use `where`)
    hosts: tuple[tuple[str, int], ...] = ()
    master_set: str | None = None
    db: int = 0
    password: str | None = None

    @property
    def where(self) -> str:
        """The target for messages, without credentials."""
        if self.kind == "single":
            parts = urlsplit(self.url)
            return f"Redis at {parts.scheme}://{parts.hostname or parts.path}{':' + str(parts.port) if parts.port else ''}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        return f"Redis Sentinel {hosts} (master set {self.master_set})" if self.kind == "sentinel" else f"Redis Cluster {hosts}"


def parse_target(url: str) -> RedisTarget:
    """The Redis a store URL names; ValueError says what is wrong with it."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisTarget("single", url)
    if not url.startswith(("redis+sentinel://", "redis+cluster://")):
        raise ValueError(f"expected 'embedded' or one of {', '.join(SCHEMES)}")
    scheme, rest = url.split("://", 1)
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        password = unquote(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo) or None
    hosts = []
    for item in filter(None, netloc.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"{scheme}: expected host:port in the host list (got {item!r})")
        hosts.append((host, int(port)))
    if not hosts:
        raise ValueError(f"{scheme}: name at least one host:port")
    if scheme == "redis+cluster":
        if path.strip("/"):
            raise ValueError("redis+cluster: a cluster has no databases; give no /path")
        return RedisTarget("cluster", url, tuple(hosts), password=password)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("redis+sentinel: expected /MASTER_SET or /MASTER_SET/DB after the sentinels")
    return RedisTarget("sentinel", url, tuple(hosts), master_set=parts[0], db=int(parts[1]) if len(parts) == 2 else 0,
                       password=password)


def connect(target: RedisTarget, **options: Any) -> Any:
    """A client for the target (`options`: timeouts and retry, as for `redis.asyncio.Redis`)."""
    if target.kind == "single":
        return aioredis.from_url(target.url, **options)
    if target.kind == "sentinel":
        probe = {k: v for k, v in options.items() if k in ("socket_connect_timeout", "socket_timeout")}
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=probe, password=target.password, db=target.db,
                            **options)
        return sentinel.master_for(target.master_set)
    nodes = [ClusterNode(host, port) for host, port in target.hosts]
    return RedisCluster(startup_nodes=nodes, password=target.password, **options)
