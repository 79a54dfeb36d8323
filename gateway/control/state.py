"""The control state, mirrored in memory on every replica.

The request path reads only this mirror: no store round trip per request. The mirror
follows the store's change feed, confirms itself with a heartbeat, and repairs a missed
change by resynchronising. If it cannot confirm the state for longer than the policy's
`max_staleness`, every model is served at the policy's `on_state_loss` level until it
can again: an unknown state means more human oversight, never less.

Documents (their keys: `gateway.control.keys`):
- a level (global or per model) -> {"level", "actor", "reason", "at"}
- a model's active version -> {"version", "actor", "reason", "at"}
- a version's registration and its verification verdict; the deployment's sampling key
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from gateway.control import keys
from gateway.store import Change, Confirmation, ControlStore, Resync, Snapshot, StaleWrite, StoreUnavailable

log = logging.getLogger("gateway.state")

StateListener = Callable[[keys.Key, dict[str, Any] | None, dict[str, Any]], None]
"""Called after each applied change with (what the key names, old document, new document)."""


class ControlState:
    def __init__(self, store: ControlStore, *, initial_level: int, max_staleness: float, on_state_loss: int) -> None:
        self.store = store
        self.initial_level = initial_level
        self.max_staleness = max_staleness
        self.on_state_loss = on_state_loss
        self.epoch = 0
        self.docs: dict[str, dict[str, Any]] = {}
        # Derived views read on the request path.
        self.global_level = initial_level
        self.model_levels: dict[str, int] = {}
        self.active: dict[str, str] = {}
        self.confirmed_at = time.monotonic()
        self._watches_staleness = store.shared
        self._suspicions = 0  # store failures seen; a heartbeat begun before one cannot confirm past it
        self._failing_closed = False
        self._listeners: list[StateListener] = []
        self._loss_listeners: list[Callable[[], None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._resyncing: asyncio.Task[None] | None = None
        self._pending_acks: set[asyncio.Task[None]] = set()

    # request path ---------------------------------------------------------------
    def level_for(self, model: str) -> int:
        """The effective level: the higher of global and model, raised further if stale."""
        level = self.model_levels.get(model, self.initial_level)
        if self.global_level > level:
            level = self.global_level
        if self._watches_staleness and level < self.on_state_loss and self.is_stale():
            level = self.on_state_loss
        return level

    def is_stale(self) -> bool:
        return self._watches_staleness and time.monotonic() - self.confirmed_at > self.max_staleness

    def suspect(self, reason: str) -> None:
        """The store just failed a call: the state is unknown from now until a heartbeat confirms it again.

        Waiting out `max_staleness` would let a replica that knows its store is gone keep
        calling models at the levels it last saw; failing closed at once does not.
        """
        if not self._watches_staleness:
            return
        self._suspicions += 1
        self.confirmed_at = -math.inf
        if not self._failing_closed:
            self._failing_closed = True
            log.error("cannot confirm control state (%s); serving every model at level %d until it can",
                      reason, self.on_state_loss)
            for listener in self._loss_listeners:
                listener()

    # lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self.store.on_unavailable = self.suspect
        snapshot = await self.store.open(self._on_change)
        self._load(snapshot)
        self.confirmed_at = time.monotonic()
        if self.store.shared:
            try:
                await self.store.confirm(self.epoch)
            except StoreUnavailable:
                pass  # reachable, but not confirming (no replica follows it): failing closed until the heartbeat can
            self._heartbeat = asyncio.create_task(self._beat(), name="gateway-state-heartbeat")

    async def stop(self) -> None:
        for task in (self._heartbeat, self._resyncing, *self._pending_acks):
            if task is not None:
                task.cancel()
        await self.store.close()

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def add_loss_listener(self, listener: Callable[[], None]) -> None:
        """Called when this replica starts failing closed (its state is unknown), before any request sees it."""
        self._loss_listeners.append(listener)

    @property
    def replica_id(self) -> str:
        return self.store.replica_id

    def doc(self, key: str) -> dict[str, Any] | None:
        """The mirrored document at `key` (build keys with `gateway.control.keys`)."""
        return self.docs.get(key)

    async def fetch(self, key: str) -> dict[str, Any] | None:
        """The document as the store has it right now, ahead of the feed (one round trip)."""
        return (await self.store.snapshot()).docs.get(key)

    # writing --------------------------------------------------------------------
    async def change(
        self,
        key: str,
        doc: dict[str, Any],
        *,
        audit: dict[str, Any],
        expect_rev: int | None = None,
        confirm_timeout: float = 2.0,
    ) -> tuple[Change, Confirmation]:
        """Write a control document; answer once every live replica applied it (or timed out)."""
        change = await self.store.put(key, doc, expect_rev=expect_rev, audit=audit)
        self._on_change(change)
        confirmation = await self.store.wait_applied(change.epoch, confirm_timeout)
        return change, confirmation

    # following the store --------------------------------------------------------
    def _on_change(self, change: Change | Resync) -> None:
        if isinstance(change, Resync):  # the backend reconnected: whatever we missed, fetch it
            self._schedule_resync()
            return
        current = self.docs.get(change.key)
        if current is None or current.get("rev", 0) < change.epoch:
            self._apply(change.key, change.doc)
        if change.epoch == self.epoch + 1:
            self.epoch = change.epoch
            self._ack(self.epoch)
        elif change.epoch > self.epoch + 1:
            self._schedule_resync()

    def _load(self, snapshot: Snapshot) -> None:
        for key, doc in snapshot.docs.items():
            current = self.docs.get(key)
            if current is None or current.get("rev", 0) < doc.get("rev", 0):
                self._apply(key, doc)
        self.epoch = max(self.epoch, snapshot.epoch)

    def _apply(self, key: str, doc: dict[str, Any]) -> None:
        old = self.docs.get(key)
        self.docs[key] = doc
        named = keys.parse(key)
        match named:
            case keys.Level(None):
                self.global_level = int(doc["level"])
            case keys.Level(model):
                self.model_levels[model] = int(doc["level"])
            case keys.Active(model):
                self.active[model] = doc["version"]
            case None:
                return  # written by a newer gateway: kept, but nothing here reads it
        for listener in self._listeners:
            try:
                listener(named, old, doc)
            except Exception:
                log.exception("state listener failed for %s", key)

    def _ack(self, epoch: int) -> None:
        task = asyncio.get_running_loop().create_task(self._report(epoch))
        self._pending_acks.add(task)
        task.add_done_callback(self._pending_acks.discard)

    async def _report(self, epoch: int) -> None:
        try:
            await self.store.report_applied(epoch)
        except StoreUnavailable:
            pass  # the heartbeat reports it once the store is back

    def _schedule_resync(self) -> None:
        if self._resyncing is None or self._resyncing.done():
            self._resyncing = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        try:
            started = time.monotonic()
            self._load(await self.store.snapshot())
            self.confirmed_at = started
            await self.store.report_applied(self.epoch)
        except StoreUnavailable as exc:
            log.warning("state resync failed: %s", exc)

    async def _restore_store(self) -> None:
        """The store went back in time (restarted without its data): put our state back.

        Levels, kill switches and active versions must not silently reset to defaults.
        Each missing document is written only if still missing, so replicas restoring at
        once write it once; then the store's epochs are the authority again.
        """
        log.error("the state store lost its data (epoch %d behind this replica's); restoring from this replica", self.epoch)
        snapshot = await self.store.snapshot()
        for key, doc in self.docs.items():
            if key in snapshot.docs:
                continue
            restored = {k: v for k, v in doc.items() if k != "rev"}
            audit = {"action": "restore", "actor": f"replica:{self.store.replica_id}", "reason": "state store lost its data"}
            try:
                await self.store.put(key, restored, expect_rev=0, audit=audit)
            except StaleWrite:
                pass
        fresh = await self.store.snapshot()
        self.docs = {}
        self.epoch = 0
        self._load(fresh)

    async def _beat(self) -> None:
        """Confirm the mirror with the store several times per `max_staleness`."""
        interval = max(0.05, self.max_staleness / 4)
        while True:
            started = time.monotonic()
            suspicions = self._suspicions
            try:
                # Compare with the epoch as sent: changes applied from the feed while the
                # heartbeat is in flight must not look like a store that went back in time.
                sent = self.epoch
                store_epoch = await asyncio.wait_for(self.store.confirm(sent), interval * 2)
                if store_epoch < sent:
                    await self._restore_store()
                elif store_epoch > self.epoch:
                    self._load(await asyncio.wait_for(self.store.snapshot(), interval * 2))
                    await self.store.report_applied(self.epoch)
                if self._suspicions == suspicions:  # no failure since this heartbeat began
                    self.confirmed_at = started
                    if self._failing_closed:
                        self._failing_closed = False
                        log.warning("control state confirmed again; levels as set")
            except (StoreUnavailable, asyncio.TimeoutError, OSError) as exc:
                self.suspect(str(exc) or exc.__class__.__name__)
            except Exception:  # a defect: the heartbeat goes on (and fails closed meanwhile), and says so
                log.exception("the control-state heartbeat failed; trying again")
                self.suspect("the heartbeat failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
