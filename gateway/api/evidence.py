"""`/admin/evidence`: records with inclusion proofs, checkpoints with consistency proofs, legal holds, exports.

Read access for auditors and operators; holds are set by operators (and incidents).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import time

from pydantic import Field
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway.api.bodies import ControlBody
from gateway.api.common import body_as, caller, ok
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.errors import BadRequest, NotFound
from gateway.evidence import EvidenceLog, pack_body
from gateway.proxy.stages import Callers
from gateway.recording.export import Exports, Selection, parse_time
from gateway.recording.evidence import EvidenceRecorder
from gateway.recording.fleet import FleetLogs, Found


class HoldIn(ControlBody):
    since: float | None = None
    until: float | None = None
    reason: str = Field(min_length=1, max_length=2000)


class ReleaseIn(ControlBody):
    reason: str = Field(min_length=1, max_length=2000)


def _proven(found: Found) -> dict:
    """One log's records of a request, proven against a checkpoint that covers them (blocking)."""
    log = found.log
    checkpoint = log.latest_checkpoint()
    if found.own and found.indexes[-1] >= checkpoint.size:  # newer than the last checkpoint: sign one that covers it
        checkpoint = log.checkpoint_now()
    out = []
    for idx in found.indexes:
        record = log.get(idx)
        bodies = record.pop("bodies", None)
        if isinstance(bodies, dict):
            record["bodies"] = {name: pack_body(value) if isinstance(value, bytes) else value for name, value in bodies.items()}
        out.append({"index": idx, "record": record, "leaf_b64": base64.b64encode(log.read_leaf(idx)).decode(),
                    "inclusion_proof": [h.hex() for h in log.inclusion_proof(idx, checkpoint.size)]})
    return {"log": log.origin, "served_here": found.own, "checkpoint": _checkpoint(checkpoint), "records": out}


def _checkpoint(cp) -> dict:
    return {"size": cp.size, "root_hash": cp.root.hex(), "time": cp.time, "note": cp.note() if hasattr(cp, "note") else None}


class EvidenceApi:
    def __init__(self, callers: Callers, evidence: EvidenceRecorder | None, fleet: FleetLogs | None,
                 exports: Exports | None, *, catch_up: float = 0.0,
                 max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES) -> None:
        self.callers = callers
        self.evidence = evidence
        self.fleet = fleet
        self.exports = exports
        self.catch_up = catch_up  # how long a lookup waits for another replica to checkpoint what it holds
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/admin/evidence/checkpoints", self.checkpoints, methods=["GET"]),
            Route("/admin/evidence/holds", self.list_holds, methods=["GET"]),
            Route("/admin/evidence/holds", self.set_hold, methods=["POST"]),
            Route("/admin/evidence/holds/{hold_id}/release", self.release_hold, methods=["POST"]),
            Route("/admin/evidence/export", self.export, methods=["GET"]),
            Route("/admin/evidence/{request_id}", self.record, methods=["GET"]),
        ]

    def _log(self) -> EvidenceLog:
        log = self.evidence.log if self.evidence is not None else None
        if log is None:
            raise NotFound("evidence recording is off in this gateway's config")
        return log

    async def record(self, request: Request) -> Response:
        """The records of a request id in every log of the fleet, each with its inclusion proof against its log's checkpoint."""
        caller(request, self.callers, "auditor", "operator")
        log = self._log()
        request_id = request.path_params["request_id"]
        found = await self.fleet.wait_covered(request_id, self.catch_up) if self.fleet else []
        if not found:
            others = await asyncio.to_thread(lambda: len(self.fleet.others())) if self.fleet else 0
            raise NotFound(f"no evidence for request {request_id!r} in this replica's log ({log.origin}) or the "
                           f"{others} other replica log(s) it can read in {self.evidence.base}")
        logs = [await asyncio.to_thread(_proven, part) for part in found]
        return ok({"request_id": request_id, **logs[0], "logs": logs})

    async def checkpoints(self, request: Request) -> Response:
        caller(request, self.callers, "auditor", "operator")
        log = self._log()
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

    async def list_holds(self, request: Request) -> Response:
        caller(request, self.callers, "auditor", "operator")
        return ok({"holds": self._log().legal_holds()})

    async def set_hold(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, HoldIn, limit=self.max_body_bytes)
        if body.since is not None and body.until is not None and body.until < body.since:
            raise BadRequest("until is before since")
        hold_id = "hold_" + os.urandom(6).hex()
        index = await asyncio.to_thread(self._log().set_legal_hold, hold_id, body.since, body.until, body.reason, who.id)
        return ok({"hold": hold_id, "record": index, "since": body.since, "until": body.until, "set_at": time.time()},
                  status=201)

    async def release_hold(self, request: Request) -> Response:
        who = caller(request, self.callers, "operator")
        body = await body_as(request, ReleaseIn, limit=self.max_body_bytes)
        log = self._log()
        hold_id = request.path_params["hold_id"]
        if hold_id not in log.legal_holds():
            raise NotFound(f"no legal hold {hold_id!r}")
        index = await asyncio.to_thread(log.release_legal_hold, hold_id, who.id, body.reason)
        return ok({"hold": hold_id, "released": True, "record": index})

    async def export(self, request: Request) -> Response:
        """A self-verifying bundle of the selected evidence, as a tar.gz download."""
        who = caller(request, self.callers, "auditor", "operator")
        self._log()
        assert self.exports is not None
        q = request.query_params
        selection = Selection(parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until"),
                              q.get("model") or None, q.get("incident") or None)
        out = await self.exports.bundle(selection, requested_by=who.id, reason=q.get("reason") or "export")
        name = f"evidence-{selection.incident or int(selection.since or 0)}.tar.gz"
        return FileResponse(out, media_type="application/gzip", filename=name,
                            background=BackgroundTask(shutil.rmtree, out.parent, ignore_errors=True))
