"""PagerDuty Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`): one alert per incident.

The incident id is the `dedup_key`, so every event of one incident lands on one PagerDuty
alert: detected and notes trigger (or update) it, an acknowledgement acknowledges it, a
resolution resolves it. The routing key is not part of what is built here: the notifier
adds it when sending, so it never sits in the outbox.
"""

from __future__ import annotations

from typing import Any

from gateway.incidents.records import Incident

_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
_ACTION = {"acknowledged": "acknowledge", "resolved": "resolve"}


def pagerduty_event(incident: Incident, event: str, text: str, *, role: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"event": event, "incident": incident.id, "trigger": incident.trigger,
                               "values": incident.values, "status": incident.status, "version": incident.version,
                               "roles": {r: who.get("who") for r, who in incident.roles.items()}, "message": text[:4000]}
    if role:
        details["paged_role"] = role
    return {
        "event_action": _ACTION.get(event, "trigger"),
        "dedup_key": incident.id,
        "payload": {
            "summary": f"[{incident.severity.upper()}] {incident.summary}"[:1024],
            "source": f"oversight-gateway/{incident.model or 'gateway'}",
            "severity": _SEVERITY.get(incident.severity, "error"),
            "component": incident.model or "gateway",
            "group": incident.category,
            "class": incident.trigger,
            "custom_details": details,
        },
    }
