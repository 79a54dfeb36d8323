"""The one interface through which every part of the gateway records evidence.

Decisions (a request and what became of it) and control actions (who changed what, and
why) go through a `Recorder`. The evidence log implements it; `NullRecorder` keeps the
call sites honest where no log is configured.
"""

from __future__ import annotations

from typing import Any, Protocol


class Recorder(Protocol):
    async def decision(self, record: dict[str, Any], bodies: dict[str, bytes] | None = None) -> int | None:
        """Record a decision; returns once it is handed to the operating system."""

    async def durable(self, index: int | None) -> None:
        """Wait until a recorded decision is on disk (held requests, before their 202)."""

    async def action(self, kind: str, *, actor: str, reason: str, **details: Any) -> int | None:
        """Record a control action (a level change, a kill, a switch, a review decision) once it is in the OS."""


class NullRecorder:
    async def decision(self, record: dict[str, Any], bodies: dict[str, bytes] | None = None) -> int | None:
        return None

    async def durable(self, index: int | None) -> None:
        return None

    async def action(self, kind: str, *, actor: str, reason: str, **details: Any) -> int | None:
        return None
