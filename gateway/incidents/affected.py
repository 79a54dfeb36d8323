"""The affected-individuals report: who an incident's decisions were about, and which a human overturned.

Step 5 of the seed's bias workflow ("notify individuals affected", "offer remediation",
"provide appeal mechanism") starts from this list: every decision the evidence logs hold
for the incident's window, by group and outcome, those a reviewer later overturned (a held
answer overridden or rejected, a post-hoc, retro-review or appeal verdict of disagree),
those their users reported or appealed (`POST /v1/reports`), and the
subject's identifier where the model's policy names a pointer to it (`subject_pointer`;
without one, the request id is all there is). It is served as JSON and CSV and is part of
the incident's export bundle.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from typing import Any, Protocol

from gateway.incidents.records import Incident
from gateway.incidents.window import WindowDecisions
from gateway.store import Collections

OVERTURNING = {"override", "reject", "disagree"}
CSV_COLUMNS = ("request_id", "time", "model", "version", "replica", "route", "group", "outcome", "favourable", "subject",
               "reviewed", "review_outcome", "overturned", "reviewed_by", "ticket", "reported", "appealed")
REPORTS = "reports"  # users' reports and appeals (gateway.incidents.reports)


class Incidents(Protocol):
    async def get(self, incident_id: str) -> Incident: ...


class AffectedReport:
    def __init__(self, window: WindowDecisions, tickets: Collections, incidents: Incidents, *,
                 subject_pointers: dict[str, str | None]) -> None:
        self.window = window
        self.tickets = tickets
        self.incidents = incidents
        self.subject_pointers = subject_pointers

    async def build(self, incident_id: str) -> dict[str, Any]:
        incident = await self.incidents.get(incident_id)
        until = incident.resolved_at or time.time()
        decided = (await asyncio.to_thread(self.window.read, incident.since, until, incident.model)
                   if incident.model else [])
        ids = {d.request_id for d in decided}
        reviews = await self._reviews(ids)
        reports = {doc["request_id"]: doc for doc in await self.tickets.query(REPORTS, limit=100_000)
                   if doc.get("request_id") in ids}
        by_group: dict[str, dict[str, int]] = {}
        by_version: dict[str, int] = {}
        rows = []
        for d in decided:
            group, outcome = d.group or "(unknown)", "(unknown)" if d.outcome is None else str(d.outcome)
            by_group.setdefault(group, {}).setdefault(outcome, 0)
            by_group[group][outcome] += 1
            by_version[d.version] = by_version.get(d.version, 0) + 1
            review = reviews.get(d.request_id)
            verdict = (review["decision"].get("verdict") or review["decision"].get("action")) if review else None
            rows.append({"request_id": d.request_id, "time": round(d.time, 3), "model": d.model, "version": d.version,
                         "replica": d.replica, "route": d.route, "group": d.group, "outcome": d.outcome,
                         "favourable": d.favourable, "subject": d.subject, "reviewed": review is not None,
                         "review_outcome": verdict, "overturned": verdict in OVERTURNING,
                         "reviewed_by": review["decision"].get("by") if review else None,
                         "ticket": review["id"] if review else None,
                         "reported": reports[d.request_id]["category"] if d.request_id in reports else None,
                         "appealed": bool(reports.get(d.request_id, {}).get("appeal"))})
        overturned = [r for r in rows if r["overturned"]]
        pointer = self.subject_pointers.get(incident.model or "")
        return {
            "incident": incident.id, "model": incident.model, "window": {"since": incident.since, "until": until},
            "generated_at": time.time(), "decisions": len(rows), "by_group_outcome": by_group, "by_version": by_version,
            "overturned": len(overturned), "overturned_requests": [r["request_id"] for r in overturned],
            "reported": sum(1 for r in rows if r["reported"]), "appealed": sum(1 for r in rows if r["appealed"]),
            "subject_pointer": pointer,
            "subjects": sorted({r["subject"] for r in rows if r["subject"] is not None}),
            "note": (None if pointer else "the model's policy names no subject_pointer: individuals are identified "
                                          "by request id only"),
            "individuals": rows,
        }

    async def _reviews(self, request_ids: set[str]) -> dict[str, dict[str, Any]]:
        """The latest decided ticket of each request (an overturning one wins over an agreeing one)."""
        found: dict[str, dict[str, Any]] = {}
        if not request_ids:
            return found
        for doc in await self.tickets.query("tickets", where={"status": "decided"}, limit=100_000, newest_first=False):
            if doc.get("request_id") not in request_ids or not doc.get("decision"):
                continue
            previous = found.get(doc["request_id"])
            outcome = doc["decision"].get("verdict") or doc["decision"].get("action")
            if previous is None or outcome in OVERTURNING:
                found[doc["request_id"]] = doc
        return found


def as_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["individuals"]:
        writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """A value as a CSV cell; text a spreadsheet would run as a formula (a subject id is client input) is quoted."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
