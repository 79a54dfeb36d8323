"""Assembling a forensic export: which records, and everything a reader needs beside them.

The bundle itself (records with proofs, checkpoints, signed manifest) is written by the
evidence library (`gateway.evidence.write_bundle`); this module gathers the rest as it
stands in the running gateway: the config and policy (secrets removed), the level and
version history, the review decisions, the incident and its timeline, the models'
signature bundles and verdicts, and the sampling key (so an auditor can recompute which
requests were sampled).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import yaml

from gateway.config import Config
from gateway.errors import BadRequest, NotFound
from gateway.incidents.records import Incident
from gateway.integrity.gate import IntegrityGate
from gateway.policy import Policy
from gateway.recording.evidence import EvidenceRecorder
from gateway.recording.fleet_export import FleetExport, Window
from gateway.redaction import scrubbed_config  # lived here; `gateway config show` shares it
from gateway.store import AuditTrail, Collections


@dataclass(frozen=True)
class Selection:
    since: float | None
    until: float | None
    model: str | None
    incident: str | None


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (a time without a zone is UTC)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: expected unix seconds or an ISO 8601 time such as 2026-11-27T10:00:00Z (got {value!r})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


class ExportStore(Collections, AuditTrail, Protocol):
    """Tickets and incidents (collections) and the history of control changes."""


class Incidents(Protocol):
    async def get(self, incident_id: str) -> Incident: ...


class Exports:
    """Bundles of the evidence every log of the fleet holds, with the gateway's context beside them."""

    def __init__(self, evidence: EvidenceRecorder, logs: FleetExport, store: ExportStore, incidents: Incidents,
                 integrity: IntegrityGate, *, config: Config, policy: Policy, sampling_key: Callable[[], bytes],
                 sample_rates: Mapping[str, Any]) -> None:
        self.evidence = evidence
        self.logs = logs
        self.store = store
        self.incidents = incidents
        self.integrity = integrity
        self.config = config
        self.policy = policy
        self.sampling_key = sampling_key
        self.sample_rates = sample_rates  # per model: which models there are, too
        # An incident's own reports (affected individuals, retro-reviews), by file name; set by the wiring.
        self.incident_reports: Callable[[str], Any] | None = None

    async def bundle(self, selection: Selection, *, requested_by: str, reason: str) -> Path:
        """Write the bundle to a fresh temporary folder; the caller removes `path.parent` when done."""
        if selection.model and selection.model not in self.sample_rates:
            raise NotFound(f"unknown model {selection.model!r}")
        selection, incident = await self._resolve(selection)
        extras = await self._extras(selection, incident)
        filters = {"since": selection.since, "until": selection.until, "model": selection.model,
                   "incident": selection.incident}
        out = Path(tempfile.mkdtemp(prefix="gw-export-")) / "evidence.tar.gz"
        try:
            records = await self.logs.write(out, Window(selection.since, selection.until, selection.model), extras=extras,
                                            description={"filters": filters, "requested_by": requested_by})
        except BaseException:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise
        await self.evidence.action("evidence_export", actor=requested_by, reason=reason, records=records,
                                   filters=filters)
        return out

    async def _resolve(self, selection: Selection) -> tuple[Selection, Incident | None]:
        """An incident export covers the incident's window; a time export needs both ends."""
        if selection.incident:
            incident = await self.incidents.get(selection.incident)
            since = selection.since if selection.since is not None else incident.since
            until = selection.until if selection.until is not None else (incident.resolved_at or time.time())
            return Selection(since, until, selection.model or incident.model, selection.incident), incident
        if selection.since is None or selection.until is None:
            raise BadRequest("give an incident, or both since and until")
        if selection.until < selection.since:
            raise BadRequest("until is before since")
        return selection, None

    async def _extras(self, selection: Selection, incident: Incident | None) -> dict[str, bytes]:
        extras: dict[str, bytes] = {
            "config.yaml": yaml.safe_dump(scrubbed_config(self.config), sort_keys=False).encode(),
            "policy.json": _json({"version": self.policy.version, "digest": self.policy.digest,
                                  **self.policy.model_dump(mode="json")}),
            "history.json": _json(await self.store.audit_log(limit=100_000)),
            "review-decisions.json": _json(await self._decisions(selection)),
            "sampling.json": _json({"key": self.sampling_key().hex(), "method": "blake2b-64(request_id, key) / 2^64 < rate",
                                    "rates": dict(self.sample_rates)}),
        }
        if incident is not None:
            extras["incident.json"] = _json(incident.to_doc())
            if self.incident_reports is not None:
                extras.update(await self.incident_reports(incident.id))
        for (model, version), config in self.integrity.versions.items():
            if selection.model and model != selection.model:
                continue
            extras[f"models/{model}/{version}/verification.json"] = _json(self.integrity.describe(model, version))
            if config.signed and config.signature is not None:
                try:
                    extras[f"models/{model}/{version}/model.sig"] = await asyncio.to_thread(Path(config.signature).read_bytes)
                except OSError as exc:
                    extras[f"models/{model}/{version}/model.sig.missing"] = f"cannot read {config.signature}: {exc}\n".encode()
        return extras

    async def _decisions(self, selection: Selection) -> list[dict[str, Any]]:
        out = []
        for status in ("decided", "expired", "pending"):
            for ticket in await self.store.query("tickets", where={"status": status}, limit=100_000, newest_first=False):
                created = ticket.get("created_at", 0)
                if selection.since is not None and created < selection.since:
                    continue
                if selection.until is not None and created >= selection.until:
                    continue
                if selection.model and ticket.get("model") != selection.model:
                    continue
                out.append(ticket)
        return sorted(out, key=lambda t: t.get("created_at", 0))


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"
