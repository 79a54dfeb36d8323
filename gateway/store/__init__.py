"""State store: `Store` is the interface; `embedded` and `redis` are its backends."""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import Change, Confirmation, Snapshot, StaleWrite, Store, StoreUnavailable

__all__ = ["Change", "Confirmation", "Snapshot", "StaleWrite", "Store", "StoreUnavailable", "make_store"]


def make_store(url: str, data_dir: Path, *, liveness: float = 2.0) -> Store:
    """The backend a config's `store:` names: 'embedded' or a redis:// URL."""
    if url == "embedded":
        from gateway.store.embedded import EmbeddedStore

        return EmbeddedStore(Path(data_dir) / "state.sqlite3")
    from gateway.store.redis import RedisStore

    return RedisStore(url, liveness=liveness)
