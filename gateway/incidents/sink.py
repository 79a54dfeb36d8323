"""The one interface through which any part of the gateway raises an incident."""

from __future__ import annotations

from typing import Any, Protocol


class IncidentSink(Protocol):
    async def raise_incident(self, *, category: str, trigger: str, severity: str, model: str | None,
                             version: str | None, summary: str, values: dict[str, Any]) -> Any: ...
