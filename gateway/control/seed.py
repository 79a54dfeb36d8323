"""First start: each model serves its configured version, and the deployment gets a sampling key.

Written only where nothing is stored yet (compare-and-set against "absent"), so replicas
starting together agree, and later starts keep what operators changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from gateway.control import keys
from gateway.control.state import ControlState
from gateway.store import StaleWrite


async def seed_first_start(state: ControlState, initial_versions: Mapping[str, str]) -> bytes:
    """Seed what is missing; returns the deployment's sampling key (as stored, whoever wrote it)."""
    now = time.time()
    first = {"actor": "config", "reason": "first start", "at": now}
    seeds = {keys.active(model): {"version": version, **first} for model, version in initial_versions.items()}
    seeds[keys.SAMPLING] = {"key": os.urandom(16).hex(), **first}
    for key, doc in seeds.items():
        if state.doc(key) is not None:
            continue
        audit = {"action": "seed", "actor": "config", "reason": "first start"}
        if "version" in doc:
            audit["to"] = doc["version"]
        try:
            await state.change(key, doc, expect_rev=0, audit=audit, confirm_timeout=0.0)
        except StaleWrite:
            pass  # another replica seeded it first; its change reaches us through the feed
    sampling = state.doc(keys.SAMPLING) or await state.fetch(keys.SAMPLING)
    assert sampling is not None, "seeded above, by this replica or another"
    return bytes.fromhex(sampling["key"])
