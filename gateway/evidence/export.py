"""Assembling a forensic export: which records, and everything a reader needs beside them.

The bundle itself (records with proofs, checkpoints, signed manifest) is written by
`gateway.evidence.bundle`; this module gathers the rest as it stands in the running
gateway: the config and policy (secrets removed), the level and version history, the
review decisions, the incident and its timeline, the models' signature bundles and
verdicts, and the sampling key (so an auditor can recompute which requests were sampled).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gateway.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from gateway.context import Gateway

REDACTED = "[redacted]"


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


async def resolve(gw: "Gateway", selection: Selection) -> tuple[Selection, dict[str, Any] | None]:
    """An incident export covers the incident's window; a time export needs both ends."""
    if selection.incident:
        incident = await gw.store.get("incidents", selection.incident)
        if incident is None:
            raise NotFound(f"no incident {selection.incident!r}")
        window = incident.get("window") or {}
        since = selection.since if selection.since is not None else window.get("since", incident.get("opened_at"))
        until = selection.until if selection.until is not None else (incident.get("resolved_at") or time.time())
        return Selection(since, until, selection.model or incident.get("model"), selection.incident), incident
    if selection.since is None or selection.until is None:
        raise BadRequest("give an incident, or both since and until")
    if selection.until < selection.since:
        raise BadRequest("until is before since")
    return selection, None


async def gather_extras(gw: "Gateway", selection: Selection, incident: dict[str, Any] | None) -> dict[str, bytes]:
    extras: dict[str, bytes] = {
        "config.yaml": yaml.safe_dump(scrubbed_config(gw), sort_keys=False).encode(),
        "policy.json": _json({"version": gw.policy.version, "digest": gw.policy.digest, **gw.policy.model_dump(mode="json")}),
        "history.json": _json(await gw.store.audit_log(limit=100_000)),
        "review-decisions.json": _json(await _decisions(gw, selection)),
        "sampling.json": _json({"key": gw.sampling_key.hex(), "method": "blake2b-64(request_id, key) / 2^64 < rate",
                                "rates": {m: gw.model_policy(m).sample_rate for m in gw.catalog.models}}),
    }
    if incident is not None:
        extras["incident.json"] = _json(incident)
    for (model, version), config in gw.integrity.versions.items():
        if selection.model and model != selection.model:
            continue
        extras[f"models/{model}/{version}/verification.json"] = _json(gw.integrity.describe(model, version))
        if config.signed and config.signature is not None:
            try:
                extras[f"models/{model}/{version}/model.sig"] = await asyncio.to_thread(Path(config.signature).read_bytes)
            except OSError as exc:
                extras[f"models/{model}/{version}/model.sig.missing"] = f"cannot read {config.signature}: {exc}\n".encode()
    return extras


def scrubbed_config(gw: "Gateway") -> dict[str, Any]:
    """The config as it runs, minus anything secret: upstream credentials, keys, token hashes."""
    data = gw.config.model_dump(mode="json", exclude={"source"})
    data["tokens"] = [{"id": t["id"], "role": t.get("role"), "roles": t.get("roles")} for t in data.get("tokens", [])]
    for model in data.get("models", {}).values():
        for version in model.get("versions", {}).values():
            version["headers"] = {name: REDACTED for name in version.get("headers", {})}
    evidence = data.get("evidence", {})
    for name in ("encryption_key",):
        if evidence.get(name):
            evidence[name] = REDACTED
    evidence["previous_keys"] = {kid: REDACTED for kid in evidence.get("previous_keys", {})}
    return data


async def _decisions(gw: "Gateway", selection: Selection) -> list[dict[str, Any]]:
    out = []
    for status in ("decided", "expired", "pending"):
        for ticket in await gw.store.query("tickets", where={"status": status}, limit=100_000, newest_first=False):
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
