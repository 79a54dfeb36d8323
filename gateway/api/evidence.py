"""`/admin/evidence`: records with inclusion proofs, checkpoints with consistency proofs, legal holds.

Read access for auditors and operators; holds are set by operators (and incidents).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway.api.common import body_as, caller, ok
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.evidence.bundle import write_bundle
from gateway.evidence.export import Selection, gather_extras, parse_time, resolve
from gateway.evidence.log import EvidenceLog
from gateway.review.tickets import pack_body


def _log(request: Request) -> EvidenceLog:
    log = getattr(request.app.state.gateway.recorder, "log", None)
    if log is None:
        raise GatewayError("evidence recording is off in this gateway's config", status=404, type="not_found")
    return log


def _checkpoint(cp) -> dict:
    return {"size": cp.size, "root_hash": cp.root.hex(), "time": cp.time, "note": cp.note() if hasattr(cp, "note") else None}


async def record(request: Request) -> Response:
    caller(request, "auditor", "operator")
    log = _log(request)
    request_id = request.path_params["request_id"]
    indexes = await asyncio.to_thread(log.find, request_id)
    if not indexes:
        raise NotFound(f"no evidence for request {request_id!r} in this replica's log ({log.origin})")
    checkpoint = log.latest_checkpoint()
    if indexes[-1] >= checkpoint.size:  # newer than the last checkpoint: sign one that covers it
        checkpoint = await asyncio.to_thread(log.checkpoint_now)
    out = []
    for idx in indexes:
        leaf = await asyncio.to_thread(log.read_leaf, idx)
        record = await asyncio.to_thread(log.get, idx)
        bodies = record.pop("bodies", None)
        if isinstance(bodies, dict):
            record["bodies"] = {name: pack_body(value) if isinstance(value, bytes) else value for name, value in bodies.items()}
        out.append({
            "index": idx,
            "record": record,
            "leaf_b64": base64.b64encode(leaf).decode(),
            "inclusion_proof": [h.hex() for h in log.inclusion_proof(idx, checkpoint.size)],
        })
    return ok({"request_id": request_id, "log": log.origin, "checkpoint": _checkpoint(checkpoint), "records": out})


async def checkpoints(request: Request) -> Response:
    caller(request, "auditor", "operator")
    log = _log(request)
    try:
        limit = max(1, min(1000, int(request.query_params.get("limit", "100"))))
    except ValueError:
        raise BadRequest("limit must be a number") from None
    listed = (await asyncio.to_thread(log.checkpoints))[-limit:]
    proofs = []
    for older, newer in zip(listed, listed[1:]):
        if 0 < older.size < newer.size:
            proofs.append({"from": older.size, "to": newer.size,
                           "proof": [h.hex() for h in log.consistency_proof(older.size, newer.size)]})
    return ok({"log": log.origin, "checkpoints": [_checkpoint(cp) for cp in listed], "consistency": proofs})


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: float | None = None
    until: float | None = None
    reason: str = Field(min_length=1, max_length=2000)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


async def list_holds(request: Request) -> Response:
    caller(request, "auditor", "operator")
    return ok({"holds": _log(request).legal_holds()})


async def set_hold(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, HoldIn)
    if body.since is not None and body.until is not None and body.until < body.since:
        raise BadRequest("until is before since")
    hold_id = "hold_" + os.urandom(6).hex()
    index = await asyncio.to_thread(_log(request).set_legal_hold, hold_id, body.since, body.until, body.reason, who.id)
    return ok({"hold": hold_id, "record": index, "since": body.since, "until": body.until, "set_at": time.time()}, status=201)


async def release_hold(request: Request) -> Response:
    who = caller(request, "operator")
    body = await body_as(request, ReleaseIn)
    log = _log(request)
    hold_id = request.path_params["hold_id"]
    if hold_id not in log.legal_holds():
        raise NotFound(f"no legal hold {hold_id!r}")
    index = await asyncio.to_thread(log.release_legal_hold, hold_id, who.id, body.reason)
    return ok({"hold": hold_id, "released": True, "record": index})


async def export(request: Request) -> Response:
    """A self-verifying bundle of the selected evidence, as a tar.gz download."""
    who = caller(request, "auditor", "operator")
    gw = request.app.state.gateway
    log = _log(request)
    q = request.query_params
    selection = Selection(parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until"),
                          q.get("model") or None, q.get("incident") or None)
    if selection.model and selection.model not in gw.catalog.models:
        raise NotFound(f"unknown model {selection.model!r}")
    selection, incident = await resolve(gw, selection)
    extras = await gather_extras(gw, selection, incident)
    indexes = await asyncio.to_thread(lambda: list(log.select(selection.since, selection.until, selection.model)))
    description = {"filters": {"since": selection.since, "until": selection.until, "model": selection.model,
                               "incident": selection.incident}, "requested_by": who.id}
    out = Path(tempfile.mkdtemp(prefix="gw-export-")) / "evidence.tar.gz"
    signing_key = gw.recorder.signing_key
    await asyncio.to_thread(write_bundle, out, log, indexes, signing_key=signing_key, extras=extras, description=description)
    await gw.recorder.action("evidence_export", actor=who.id, reason=q.get("reason") or "export", records=len(indexes),
                       filters=description["filters"])
    name = f"evidence-{selection.incident or int(selection.since or 0)}.tar.gz"
    return FileResponse(out, media_type="application/gzip", filename=name,
                        background=BackgroundTask(shutil.rmtree, out.parent, ignore_errors=True))


def routes() -> list[Route]:
    return [
        Route("/admin/evidence/checkpoints", checkpoints, methods=["GET"]),
        Route("/admin/evidence/holds", list_holds, methods=["GET"]),
        Route("/admin/evidence/holds", set_hold, methods=["POST"]),
        Route("/admin/evidence/holds/{hold_id}/release", release_hold, methods=["POST"]),
        Route("/admin/evidence/export", export, methods=["GET"]),
        Route("/admin/evidence/{request_id}", record, methods=["GET"]),
    ]
