"""No new deployments while paused (seed, `pause_system`: "Stop new model deployments").

At level 4 (the model's, the global one, or failing closed because the state is unknown),
or while a critical incident is open for the model, activating a version is refused with
409 `deployments_paused`. Rollbacks are not deployments: they go back to a version that
served before, and are exactly what a paused incident may call for.
"""

from __future__ import annotations

from typing import Protocol

from gateway.errors import Conflict


class DeploymentsPaused(Conflict):
    type = "deployments_paused"


class Levels(Protocol):
    def level_for(self, model: str) -> int: ...


class OpenIncidents(Protocol):
    async def open_critical(self, model: str) -> list[str]:
        """Ids of the critical incidents open (or acknowledged) for `model`."""


class DeploymentFreeze:
    def __init__(self, levels: Levels, incidents: OpenIncidents) -> None:
        self.levels = levels
        self.incidents = incidents

    async def check(self, model: str, version: str) -> None:
        """Raise `DeploymentsPaused` naming why, if `version` may not be activated now."""
        level = self.levels.level_for(model)
        if level >= 4:
            raise DeploymentsPaused(f"{model} is paused (level {level}): no new deployments; a rollback is allowed "
                                    f"(POST /admin/models/{model}/rollback)", detail={"level": level, "version": version})
        critical = await self.incidents.open_critical(model)
        if critical:
            raise DeploymentsPaused(f"critical incident {critical[0]} is open for {model}: no new deployments until it "
                                    f"is resolved; a rollback is allowed", detail={"incidents": critical, "version": version})
