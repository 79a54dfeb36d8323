"""The running gateway: configuration, policy and the live parts every stage reads.

Built from a config and a policy, started and stopped by the ASGI lifespan. Tests build
one directly and call its parts as plain functions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from gateway.auth import Caller, TokenTable
from gateway.config import Config, load_config
from gateway.errors import Forbidden
from gateway.metrics import Metrics
from gateway.models import Catalog
from gateway.policy import Policy, load_policy
from gateway.state import ControlState
from gateway.store import StaleWrite, make_store

log = logging.getLogger("gateway")


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
        self.started_at = 0.0

    @classmethod
    def from_files(cls, config_path: str | Path) -> "Gateway":
        config = load_config(config_path)
        return cls(config, load_policy(config.policy))

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.state.start()
        await self._seed_active_versions()
        self.started_at = time.time()
        log.info(
            "gateway started",
            extra={"store": "embedded" if self.config.store == "embedded" else "redis", "replica": self.store.replica_id,
                   "models": sorted(self.catalog.models), "policy": self.policy.version},
        )

    async def stop(self) -> None:
        await self.state.stop()
        self.catalog.close()

    async def _seed_active_versions(self) -> None:
        """A model seen for the first time serves its configured version; after that the store decides."""
        for name, model in self.config.models.items():
            if f"active/{name}" in self.state.docs:
                continue
            doc = {"version": model.initial_version, "actor": "config", "reason": "first start", "at": time.time()}
            try:
                await self.state.change(
                    f"active/{name}", doc, expect_rev=0,
                    audit={"action": "activate", "actor": "config", "reason": "first start", "version": model.initial_version},
                    confirm_timeout=0.0,
                )
            except StaleWrite:
                pass  # another replica seeded it first

    def authorize(self, authorization: str | None, *roles: str) -> Caller:
        """The caller behind a bearer token, if it has one of `roles`."""
        caller = self.tokens.identify(authorization)
        if roles and not caller.has(*roles):
            raise Forbidden(f"token {caller.id!r} has role {caller.role!r}; this needs {' or '.join(roles)}")
        return caller
