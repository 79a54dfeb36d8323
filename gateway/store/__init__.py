"""State store: the interfaces in `base`; `embedded` (SQLite) and `redis` are the backends."""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import (
    AuditTrail,
    Change,
    Collections,
    Confirmation,
    ControlStore,
    Counters,
    Resync,
    Snapshot,
    StaleWrite,
    Store,
    StoreUnavailable,
    Topics,
)

__all__ = ["AuditTrail", "Change", "Collections", "Confirmation", "ControlStore", "Counters", "Resync", "Snapshot",
           "StaleWrite", "Store", "StoreUnavailable", "Topics", "make_store"]


def make_store(url: str, data_dir: Path, *, liveness: float = 2.0, replicas_to_ack: int = 0,
               ack_timeout: float = 1.0, shared: bool = False) -> Store:
    """The backend a config's `store:` names: 'embedded', or a Redis URL (one server, Sentinel, Cluster).

    `shared`: the embedded store is used by several worker processes of this machine at once.
    """
    if url == "embedded":
        from gateway.store.embedded import EmbeddedStore

        return EmbeddedStore(Path(data_dir) / "state.sqlite3", shared=shared, liveness=liveness)
    from gateway.store.redis import RedisStore

    return RedisStore(url, liveness=liveness, replicas_to_ack=replicas_to_ack, ack_timeout=ack_timeout)
