"""How any part of the gateway reports what it found: a `Detection`, handed to an `IncidentSink`.

Triggers (`gateway.incidents.monitor`), the integrity gate and operators report through
this one interface; the incident manager decides whether it opens an incident or adds to
the open one for the same cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.incidents.records import Incident


@dataclass(frozen=True, slots=True)
class Orders:
    """The containment a finder asks for: raise the model's level (never lowers one), roll back, revoke a
    credential (a security finding names the token id), queue the window's decisions for retro-review."""

    raise_to: int | None = None
    rollback: bool = False
    revoke_token: str | None = None
    retro_review: bool = False


@dataclass(frozen=True, slots=True)
class Detection:
    """What was found, where, and over which window; `orders=None` lets the trigger's policy decide."""

    category: str
    trigger: str
    severity: str
    summary: str
    model: str | None = None
    version: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    since: float | None = None  # the window the evidence hold and the export cover (default: the last hour)
    until: float | None = None
    orders: Orders | None = None
    actor: str = "gateway"


class IncidentSink(Protocol):
    async def raise_incident(self, detection: Detection) -> "Incident": ...
