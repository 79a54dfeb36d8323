"""The running gateway: configuration, policy and the live parts every stage reads.

Built from a config and a policy, started and stopped by the ASGI lifespan. Tests build
one directly and call its parts as plain functions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.auth import Caller, TokenTable
from gateway.config import Config, load_config
from gateway.errors import Forbidden
from gateway.evidence.recorder import EvidenceRecorder
from gateway.evidence.records import decision_record
from gateway.incidents.manager import IncidentManager
from gateway.incidents.monitor import Monitor
from gateway.incidents.notify import Notifier
from gateway.integrity.gate import IntegrityGate
from gateway.metrics import Metrics
from gateway.models import Catalog
from gateway.oversight.levels import LevelControl
from gateway.oversight.plan import Plan, plan_request
from gateway.oversight.sampling import Sampler
from gateway.policy import EffectiveModelPolicy, Policy, load_policy
from gateway.recording import NullRecorder, Recorder
from gateway.review.queue import ReviewQueue
from gateway.state import ControlState
from gateway.store import StaleWrite, make_store
from gateway.versions.registry import Registry
from gateway.versions.switch import Switcher

if TYPE_CHECKING:
    from gateway.proxy.dataplane import DataPlane
    from gateway.proxy.exchange import Exchange

log = logging.getLogger("gateway")

SAMPLING_KEY = "sampling"


class Gateway:
    def __init__(self, config: Config, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        self.tokens = TokenTable(config.tokens)
        self.metrics = Metrics()
        self.catalog = Catalog(config)
        self.access_log = logging.getLogger("gateway.access") if config.logging.access_log else None
        self.store = make_store(config.store, config.data_dir, liveness=policy.oversight.max_staleness)
        self.state = ControlState(
            self.store,
            initial_level=policy.oversight.initial_level,
            max_staleness=policy.oversight.max_staleness,
            on_state_loss=policy.oversight.on_state_loss,
        )
        self.recorder: Recorder = EvidenceRecorder(config, policy.evidence) if config.evidence.enabled else NullRecorder()
        self._redact_headers = frozenset(h.encode() for h in policy.evidence.redact_headers)
        self.incidents = IncidentManager(self)
        self.notifier = Notifier(self)
        self.monitor = Monitor(self)
        self.integrity = IntegrityGate(self.state, self.recorder, self.incidents,
                                       reverify_interval=policy.integrity.reverify_interval,
                                       serve_unsigned=policy.integrity.serve_unsigned)
        for model_name, model in config.models.items():
            for version_name, version in model.versions.items():
                self.integrity.register(model_name, version_name, version)
        self.review = ReviewQueue(self.store, policy.review, self.recorder, on_verdict=self.monitor.verdict)
        self.levels = LevelControl(self.state, policy, list(config.models), self.recorder)
        self._model_policies = {name: policy.for_model(name) for name in config.models}
        self._record_from = policy.oversight.record_all_from_level
        self.sampling_key = b""
        self.sampler = Sampler(b"")
        self.registry = Registry(self)
        self.switcher = Switcher(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dataplane: DataPlane | None = None
        self._retention: asyncio.Task[None] | None = None
        self.started_at = 0.0

    @classmethod
    def from_files(cls, config_path: str | Path) -> "Gateway":
        config = load_config(config_path)
        return cls(config, load_policy(config.policy))

    # lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self.notifier.check_template()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.recorder, EvidenceRecorder):
            await asyncio.to_thread(self.recorder.open)
            self._retention = asyncio.create_task(self._retain_forever(), name="gateway-evidence-retention")
        self.state.add_listener(self._on_state_change)
        await self.state.start()
        await self._seed()
        await self.registry.seed_from_config()
        for (model, version), config in list(self.integrity.versions.items()):
            self.integrity.register(model, version, config)  # again, now that stored verdicts are known
        await self.review.start()
        await self.integrity.start()
        await self.monitor.start()
        await self.notifier.start()
        self.started_at = time.time()
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise rescan it every time (about 40 ms each).
        gc.collect()
        gc.freeze()
        log.info(
            "gateway started",
            extra={"store": "embedded" if self.config.store == "embedded" else "redis", "replica": self.store.replica_id,
                   "models": sorted(self.catalog.models), "policy": self.policy.version},
        )

    def schedule(self, coro) -> None:
        """Run background work the gateway owns (cancelled at stop, failures logged)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %s", task.exception())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.notifier.stop()
        await self.monitor.stop()
        await self.integrity.stop()
        await self.review.stop()
        await self.state.stop()
        self.catalog.close()
        if self._retention is not None:
            self._retention.cancel()
        if isinstance(self.recorder, EvidenceRecorder):
            await asyncio.to_thread(self.recorder.close)

    async def _retain_forever(self) -> None:
        """Apply the evidence retention at start and then hourly (whole segments; never a held one)."""
        while True:
            try:
                removed = await asyncio.to_thread(self.recorder.log.apply_retention, time.time(), self.policy.evidence.retention)
                if removed:
                    log.info("evidence retention removed %d segment(s)", len(removed))
            except Exception:
                log.exception("evidence retention failed")
            await asyncio.sleep(3600)

    async def _seed(self) -> None:
        """First start: each model serves its configured version, and the deployment gets a sampling key.

        Written only where nothing is stored yet (compare-and-set against "absent"), so
        replicas starting together agree, and later starts keep what operators changed.
        """
        seeds: dict[str, dict[str, Any]] = {
            f"active/{name}": {"version": model.initial_version, "actor": "config", "reason": "first start", "at": time.time()}
            for name, model in self.config.models.items()
        }
        seeds[SAMPLING_KEY] = {"key": os.urandom(16).hex(), "actor": "config", "reason": "first start", "at": time.time()}
        for key, doc in seeds.items():
            if key in self.state.docs:
                continue
            audit = {"action": "seed", "actor": "config", "reason": "first start"}
            if key.startswith("active/"):
                audit["to"] = doc["version"]
            try:
                await self.state.change(key, doc, expect_rev=0, audit=audit, confirm_timeout=0.0)
            except StaleWrite:
                pass  # another replica seeded it first; its change reaches us through the feed
        if not self.sampling_key:
            self._use_sampling_key((await self.store.snapshot()).docs[SAMPLING_KEY]["key"])

    def _on_state_change(self, key: str, old: dict | None, new: dict) -> None:
        if key == SAMPLING_KEY:
            self._use_sampling_key(new["key"])

    def _use_sampling_key(self, hex_key: str) -> None:
        self.sampling_key = bytes.fromhex(hex_key)
        self.sampler = Sampler(self.sampling_key)

    # what the request path asks ---------------------------------------------------------
    def model_policy(self, model: str) -> EffectiveModelPolicy:
        return self._model_policies[model]

    def plan(self, model: str, level: int, request_id: bytes) -> Plan:
        return plan_request(level, self._model_policies[model], self._record_from, request_id, self.sampler)

    def integrity_gate(self, model: str, version: str) -> None:
        """Refuse traffic to a version whose weights are not verified (see `gateway.integrity.gate`)."""
        self.integrity.check(model, version)

    async def record_exchange(self, ex: "Exchange", request_headers: list[tuple[bytes, bytes]]) -> int | None:
        if isinstance(self.recorder, NullRecorder):
            return None  # recording is off: do not even build the record
        verdict = self.state.docs.get(f"verify/{ex.model}/{ex.version}") or {}
        record, bodies = decision_record(
            ex, request_headers, policy_version=self.policy.version, root_digest=verdict.get("root_digest"),
            redact_headers=self._redact_headers, redact_pointers=self._model_policies[ex.model].redact_body or (),
        )
        return await self.recorder.decision(record, bodies)

    def observe_exchange(self, ex: "Exchange", elapsed: float) -> None:
        """Live traffic signals for incident detection (see `gateway.incidents.monitor`)."""
        self.monitor.observe(ex)

    def authorize(self, authorization: str | None, *roles: str) -> Caller:
        """The caller behind a bearer token, if it has one of `roles`."""
        caller = self.tokens.identify(authorization)
        if roles and not caller.has(*roles):
            raise Forbidden(f"token {caller.id!r} has role {caller.role!r}; this needs {' or '.join(roles)}")
        return caller
