"""The one interface through which any part of the gateway raises an incident."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gateway.recording import Recorder

log = logging.getLogger("gateway.incidents")


class IncidentSink(Protocol):
    async def raise_incident(self, *, category: str, trigger: str, severity: str, model: str | None,
                             version: str | None, summary: str, values: dict[str, Any]) -> Any: ...


class LoggingIncidentSink:
    """Logs and records; used where incident management is not running."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def raise_incident(self, *, category: str, trigger: str, severity: str, model: str | None,
                             version: str | None, summary: str, values: dict[str, Any]) -> None:
        log.error("incident: %s", summary, extra={"category": category, "trigger": trigger, "severity": severity,
                                                   "model": model, "version": version})
        await self.recorder.action("incident_detected", actor="gateway", reason=summary, category=category, trigger=trigger,
                             severity=severity, model=model, version=version, values=values)
