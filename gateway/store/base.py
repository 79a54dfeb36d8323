"""The state store: what it keeps, as the narrow interfaces its users need.

Four concerns, one Protocol each, so every component asks only for what it uses:
- `ControlStore` — **control state**: small documents (levels, active versions,
  verification verdicts), each stamped with the store-wide `epoch` at which it last
  changed (`rev`), pushed to every replica; plus **replica liveness**, so a change can
  answer only once every live replica obeys it. Only the mirror (`gateway.control.state`)
  uses it; `AuditTrail` is its read-only history.
- `Collections` — larger, request-driven documents (review tickets, incidents, pending
  changes, the notification outbox) read on demand, updated with compare-and-set.
- `Counters` — time-bucketed counters and short-lived facts that expire.
- `Topics` — small messages between replicas (a ticket decided, a ticket created).

`Store` is all four: what a backend implements, and what `tests/store/` checks each
backend against. Backends differ only in reach: embedded serves one process or the worker
processes of one machine, Redis any number.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


class StoreUnavailable(Exception):
    """The store cannot be reached; callers fail closed."""


class StaleWrite(Exception):
    """A compare-and-set found something else than expected; `current` is what is there."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("the stored value changed meanwhile")
        self.current = current


@dataclass(frozen=True, slots=True)
class Change:
    """A control document as it was written at `epoch`."""

    epoch: int
    key: str
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resync:
    """The backend lost and regained its feed: changes may have been missed, read everything again."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    epoch: int
    docs: dict[str, dict[str, Any]]


@dataclass(slots=True)
class Confirmation:
    """Who applied an epoch: the answer to "does every replica obey this change yet?"."""

    epoch: int
    applied_by: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.replicas) - set(self.applied_by))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch, "applied_by": len(self.applied_by), "replicas": len(self.replicas)}
        if self.missing:
            out["unconfirmed"] = self.missing
        return out


ChangeListener = Callable[[Change | Resync], None]
TopicListener = Callable[[dict[str, Any]], None]


class AuditTrail(Protocol):
    @abc.abstractmethod
    async def audit_log(self, *, key_prefix: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries of control changes, newest first, each with `epoch` and `key`."""


class ControlStore(AuditTrail, Protocol):
    replica_id: str
    shared: bool  # True when several processes share this store
    on_unavailable: Callable[[str], None] | None  # told (with why) each time a call fails with StoreUnavailable

    @abc.abstractmethod
    async def open(self, on_change: ChangeListener) -> Snapshot:
        """Connect, start pushing changes (and `Resync` after a lost feed) to `on_change`, return the state."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def durability_problems(self) -> list[str]:
        """Why acknowledged writes might not survive a restart or failover of the store (empty: none found)."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """All control documents and the epoch they are consistent at (one atomic read)."""

    @abc.abstractmethod
    async def put(self, key: str, doc: dict[str, Any], *, expect_rev: int | None = None,
                  audit: dict[str, Any] | None = None) -> Change:
        """Set `key` atomically: bump the epoch, stamp `rev`, append `audit`, notify replicas.

        With `expect_rev`, the write happens only if the current document's `rev` equals it
        (0: the key must not exist); otherwise `StaleWrite` carries the current document.
        """

    @abc.abstractmethod
    async def confirm(self, applied_epoch: int) -> int:
        """Heartbeat: mark this replica alive at `applied_epoch`; return the store's epoch."""

    @abc.abstractmethod
    async def report_applied(self, epoch: int) -> None:
        """Tell writers this replica now obeys everything up to `epoch`."""

    @abc.abstractmethod
    async def wait_applied(self, epoch: int, timeout: float) -> Confirmation:
        """Wait until every live replica applied `epoch`, or `timeout` passes."""


class Collections(Protocol):
    @abc.abstractmethod
    async def insert(self, coll: str, id: str, doc: dict[str, Any]) -> None:
        """Add a document; `StaleWrite` if the id exists."""

    @abc.abstractmethod
    async def insert_many(self, coll: str, docs: list[dict[str, Any]]) -> None:
        """Add several documents (each with an `id`) in one round trip; existing ids are left alone."""

    @abc.abstractmethod
    async def get(self, coll: str, id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def update(self, coll: str, id: str, doc: dict[str, Any], *, expect: dict[str, Any]) -> None:
        """Replace a document if each field in `expect` still has that value, else `StaleWrite`."""

    @abc.abstractmethod
    async def query(self, coll: str, *, where: dict[str, Any] | None = None, limit: int = 100,
                    newest_first: bool = True) -> list[dict[str, Any]]:
        """Documents whose fields equal `where`, ordered by insertion.

        A document's `status` field is indexed: `where={"status": ...}` reads only the
        documents with that status, so the queue of pending tickets stays cheap to scan.
        """

    @abc.abstractmethod
    async def delete(self, coll: str, id: str) -> None: ...


class Counters(Protocol):
    @abc.abstractmethod
    async def add_counts(self, counts: dict[str, dict[str, float]], ttl: float) -> None:
        """Add to counters (key -> field -> amount) in one round trip; a key lives `ttl` seconds after its last add.

        Replicas add what they saw since their last flush, so a window's counts are the
        sum over every replica, whichever carried the traffic.
        """

    @abc.abstractmethod
    async def read_counts(self, keys: list[str]) -> dict[str, dict[str, float]]:
        """The counters of each key (an empty mapping for a key never counted or expired)."""

    @abc.abstractmethod
    async def remember(self, coll: str, items: dict[str, dict[str, Any]], ttl: float) -> None:
        """Keep small documents for `ttl` seconds (sub-second allowed), written in one round trip."""

    @abc.abstractmethod
    async def recall(self, coll: str, id: str) -> dict[str, Any] | None: ...


class Topics(Protocol):
    @abc.abstractmethod
    async def publish(self, topic: str, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def subscribe(self, topic: str, listener: TopicListener) -> Callable[[], None]:
        """Call `listener` for each message on `topic` (from any replica); returns an unsubscribe."""


class Store(ControlStore, Collections, Counters, Topics, Protocol):
    """Everything a backend provides; components take the narrow Protocols above."""


def dumps(doc: dict[str, Any]) -> str:
    """Documents as compact JSON with sorted keys, the same bytes on both backends."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
