"""The state a model is in, as evidence: recorded before every switch and when an incident opens.

What served (version, root digest, verification), under which rules (levels, config and
policy digests), how well (this replica's traffic figures) and for whom (the last request
ids it served): enough to compare against, or to go back to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.control import keys
from gateway.control.state import ControlState


class Snapshots:
    def __init__(self, state: ControlState, *, traffic: Callable[[str, str], dict[str, Any]],
                 recent: Callable[[str, str], list[str]], config_source: Path | None, policy_version: str,
                 policy_digest: str) -> None:
        self.state = state
        self.traffic = traffic
        self.recent = recent
        self.config_source = config_source
        self.policy = {"version": policy_version, "digest": policy_digest}

    def snapshot(self, model: str, version: str | None) -> dict[str, Any]:
        version = version or self.state.active.get(model)
        verdict = self.state.doc(keys.verification(model, version)) if version else None
        verdict = verdict or {}
        return {
            "version": version,
            "root_digest": verdict.get("root_digest"),
            "verification": verdict.get("status"),
            "levels": {"global": self.state.global_level, "model": self.state.model_levels.get(model),
                       "effective": self.state.level_for(model)},
            "config_sha256": _file_digest(self.config_source),
            "policy": dict(self.policy),
            "traffic": self.traffic(model, version) if version else {},
            "recent_requests": self.recent(model, version) if version else [],
            "replica": self.state.replica_id,
        }


def _file_digest(path: Path | None) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    except OSError:
        return None
