"""Incidents as values: the incident, its timeline and the containment actions taken.

Frozen, converted to and from the store's documents at the store boundary
(`Incident.to_doc`, `Incident.from_doc`); the document is also what the API shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
CATEGORIES = ("performance", "bias", "security", "availability", "other")
SEVERITIES = ("low", "medium", "high", "critical")
# The seed's incident command structure; each role is assigned to a person (or a team) by name.
ROLES = ("incident_commander", "technical_lead", "communications", "compliance")


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the incident's timeline: detected, action, repeat, acknowledged, note, resolved."""

    at: float
    type: str
    by: str
    text: str = ""
    values: dict[str, Any] | None = None
    ok: bool | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"at": self.at, "type": self.type, "by": self.by, "text": self.text}
        if self.values is not None:
            doc["values"] = self.values
        if self.ok is not None:
            doc["ok"] = self.ok
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Event":
        return cls(float(doc["at"]), doc["type"], doc.get("by", ""), doc.get("text") or "", doc.get("values"), doc.get("ok"))


@dataclass(frozen=True, slots=True)
class ActionTaken:
    """A containment step and how it went (containment goes on whatever one step does)."""

    action: str
    ok: bool
    result: str
    at: float

    def to_doc(self) -> dict[str, Any]:
        return {"action": self.action, "ok": self.ok, "result": self.result, "at": self.at}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "ActionTaken":
        return cls(doc["action"], bool(doc["ok"]), str(doc["result"]), float(doc["at"]))


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    cause: str
    status: str
    category: str
    trigger: str
    severity: str
    model: str | None
    version: str | None
    summary: str
    values: dict[str, Any]
    since: float
    until: float
    opened_at: float
    opened_by: str
    timeline: tuple[Event, ...] = ()
    actions: tuple[ActionTaken, ...] = ()
    hold: str | None = None
    updated: int = 0  # bumped by every write: the compare-and-set's witness
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    resolution: str | None = None
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {"who", "by", "at"}
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a newer gateway, kept as they are

    @property
    def is_open(self) -> bool:
        return self.status != RESOLVED

    def with_event(self, event: Event, **changes: Any) -> "Incident":
        return replace(self, timeline=self.timeline + (event,), **changes)

    def count(self, event_type: str) -> int:
        return sum(1 for e in self.timeline if e.type == event_type)

    def to_doc(self) -> dict[str, Any]:
        doc = {
            **self.extra,
            "id": self.id, "cause": self.cause, "status": self.status, "category": self.category,
            "trigger": self.trigger, "severity": self.severity, "model": self.model, "version": self.version,
            "summary": self.summary, "values": self.values, "window": {"since": self.since, "until": self.until},
            "opened_at": self.opened_at, "opened_by": self.opened_by, "timeline": [e.to_doc() for e in self.timeline],
            "actions": [a.to_doc() for a in self.actions], "hold": self.hold, "updated": self.updated,
            "roles": dict(self.roles),
        }
        for name in ("acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at", "resolution"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Incident":
        known = {"id", "cause", "status", "category", "trigger", "severity", "model", "version", "summary", "values",
                 "window", "opened_at", "opened_by", "timeline", "actions", "hold", "updated", "acknowledged_by",
                 "acknowledged_at", "resolved_by", "resolved_at", "resolution", "roles"}
        window = doc.get("window") or {}
        return cls(
            doc["id"], doc["cause"], doc["status"], doc["category"], doc["trigger"], doc["severity"], doc.get("model"),
            doc.get("version"), doc.get("summary", ""), doc.get("values") or {},
            float(window.get("since", doc["opened_at"])), float(window.get("until", doc["opened_at"])),
            float(doc["opened_at"]), doc.get("opened_by", "gateway"),
            tuple(Event.from_doc(e) for e in doc.get("timeline", ())),
            tuple(ActionTaken.from_doc(a) for a in doc.get("actions", ())), doc.get("hold"), int(doc.get("updated", 0)),
            doc.get("acknowledged_by"), doc.get("acknowledged_at"), doc.get("resolved_by"), doc.get("resolved_at"),
            doc.get("resolution"), dict(doc.get("roles") or {}), {k: v for k, v in doc.items() if k not in known},
        )
