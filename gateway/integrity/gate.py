"""The serving gate: a version answers only while its weights verify against their signature.

Verification status is control state (`verify/{model}/{version}`), so every replica
refuses a version the moment any replica finds its files changed. Versions are verified
at start-up, every `integrity.reverify_interval`, when registered or activated, and on
demand. Hashing runs on worker threads (hashlib releases the GIL), one model at a time,
so serving other models never stalls while a large one hashes.

Until a signed version is verified, or after a failed verification, its requests get
503 `model_integrity`; a failure also raises a security incident.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.config import VersionConfig
from gateway.control import keys
from gateway.errors import GatewayError
from gateway.incidents.sink import Detection, IncidentSink, Orders
from gateway.integrity.errors import IntegrityInputError
from gateway.integrity.verify import VerificationReport, verify_model

if TYPE_CHECKING:
    from gateway.control.state import ControlState
    from gateway.recorder import Recorder

log = logging.getLogger("gateway.integrity")

VERIFIED, FAILED, PENDING, UNSIGNED = "verified", "failed", "pending", "unsigned"


class IntegrityGate:
    def __init__(self, state: "ControlState", recorder: "Recorder", *, reverify_interval: float,
                 serve_unsigned: bool) -> None:
        self.state = state
        self.recorder = recorder
        self._sinks: list[IncidentSink] = []
        self.reverify_interval = reverify_interval
        self.serve_unsigned = serve_unsigned
        self.versions: dict[tuple[str, str], VersionConfig] = {}
        self.status: dict[tuple[str, str], str] = {}  # read on the request path
        self.last_verified: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()  # one model hashes at a time
        self._loop_task: asyncio.Task[None] | None = None

    def report_to(self, sink: IncidentSink) -> None:
        """Where a failed verification goes: a security incident (connected by the wiring)."""
        self._sinks.append(sink)

    # request path --------------------------------------------------------------------
    def check(self, model: str, version: str) -> None:
        status = self.status.get((model, version), PENDING)
        if status == VERIFIED or (status == UNSIGNED and self.serve_unsigned):
            return
        doc = self.state.doc(keys.verification(model, version)) or {}
        why = {
            PENDING: "its weights have not been verified yet",
            FAILED: "its weights failed verification: " + "; ".join(doc.get("problems", [])[:3]),
            UNSIGNED: "it has no signature and the policy refuses unsigned versions",
        }.get(status, status)
        raise GatewayError(f"model {model} version {version} is not served: {why}", status=503, type="model_integrity",
                           detail={"model": model, "version": version, "integrity": status})

    # registering and verifying ---------------------------------------------------------
    def register(self, model: str, version: str, config: VersionConfig) -> None:
        self.versions[(model, version)] = config
        doc = self.state.doc(keys.verification(model, version))
        if not config.signed:
            self.status[(model, version)] = UNSIGNED
        elif doc is not None and doc.get("status") == FAILED:
            self.status[(model, version)] = FAILED  # a failure stays until a fresh verification passes
        else:
            self.status[(model, version)] = PENDING  # this replica hashes the files itself before serving them

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._reverify_forever(), name="gateway-integrity")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def verify(self, model: str, version: str, *, actor: str = "integrity-gate", reason: str = "scheduled") -> dict[str, Any]:
        """Hash the version's files now and publish the verdict to every replica."""
        config = self.versions.get((model, version))
        if config is None:
            raise KeyError((model, version))
        if not config.signed:
            return await self._publish(model, version, {"status": UNSIGNED, "problems": []}, actor, reason)
        async with self._lock:
            started = time.monotonic()
            report = await asyncio.to_thread(_verify, config)
        outcome = {
            "status": VERIFIED if report.valid else FAILED,
            "root_digest": report.root_digest,
            "signer": report.signer,
            "method": report.method,
            "seconds": round(time.monotonic() - started, 3),
            "differences": [{"path": d.path, "kind": d.kind} for d in report.differences][:50],
            "problems": report.problems[:20] + [f"{d.kind}: {d.path}" for d in report.differences][:20],
        }
        previous = self.status.get((model, version))
        result = await self._publish(model, version, outcome, actor, reason)
        if outcome["status"] == FAILED:
            log.error("model %s version %s failed verification: %s", model, version, "; ".join(outcome["problems"][:3]))
            if previous != FAILED:
                serving = self.state.active.get(model) == version
                # The policy's action (level 4 for the model) when the serving version is hit; a candidate
                # that fails cannot serve anyway (this gate refuses it), so its incident only notifies.
                detection = Detection(
                    category="security", trigger="integrity", severity="critical", model=model, version=version,
                    summary=f"weights of {model}/{version} do not match their signature"
                            + ("" if serving else " (not the active version)"),
                    values={"problems": outcome["problems"][:10], "root_digest": report.root_digest, "active": serving},
                    orders=None if serving else Orders(),
                )
                for sink in self._sinks:
                    await sink.raise_incident(detection)
        return result

    async def verify_all(self, reason: str) -> None:
        for model, version in list(self.versions):
            try:
                await self.verify(model, version, reason=reason)
            except Exception:
                log.exception("verifying %s/%s failed", model, version)

    async def _publish(self, model: str, version: str, outcome: dict[str, Any], actor: str, reason: str) -> dict[str, Any]:
        doc = {**outcome, "verified_at": time.time(), "by": self.state.replica_id}
        self.last_verified[(model, version)] = doc["verified_at"]
        key = keys.verification(model, version)
        current = self.state.doc(key) or {}
        if current.get("status") == doc["status"] and current.get("root_digest") == doc.get("root_digest"):
            self.status[(model, version)] = doc["status"]
            await self._record(model, version, doc, actor, reason)  # the same verdict again: nothing for replicas to apply
            return {**current, "verified_at": doc["verified_at"], "seconds": doc.get("seconds")}
        await self.state.change(key, doc, audit={
            "action": "verification", "actor": actor, "reason": reason, "status": doc["status"],
            "root_digest": doc.get("root_digest"), "at": doc["verified_at"],
        })
        await self._record(model, version, doc, actor, reason)
        return {**doc, "rev": (self.state.doc(key) or {}).get("rev")}

    async def _record(self, model: str, version: str, doc: dict[str, Any], actor: str, reason: str) -> None:
        await self.recorder.action("verification", actor=actor, reason=reason, model=model, version=version,
                             status=doc["status"], root_digest=doc.get("root_digest"), signer=doc.get("signer"),
                             problems=doc.get("problems", [])[:10])

    def on_state_change(self, key: keys.Key, old: dict | None, new: dict) -> None:
        if isinstance(key, keys.Verification):
            self.status[(key.model, key.version)] = new["status"]

    async def _reverify_forever(self) -> None:
        await self.verify_all("start-up")
        while True:
            await asyncio.sleep(self.reverify_interval)
            await self.verify_all("scheduled re-verification")

    def root_digest(self, model: str, version: str) -> str | None:
        """The verified root digest of a version's weights (what a decision record names)."""
        return (self.state.doc(keys.verification(model, version)) or {}).get("root_digest")

    def describe(self, model: str, version: str) -> dict[str, Any]:
        doc = self.state.doc(keys.verification(model, version)) or {}
        config = self.versions.get((model, version))
        return {
            "status": self.status.get((model, version), PENDING),
            "signed": bool(config and config.signed),
            "root_digest": doc.get("root_digest"),
            "signer": doc.get("signer"),
            "verified_at": max(doc.get("verified_at") or 0, self.last_verified.get((model, version), 0)) or None,
            "verified_by": doc.get("by"),
            "problems": doc.get("problems", []),
        }


def _verify(config: VersionConfig) -> VerificationReport | Any:
    """Run on a worker thread. Unusable input (missing files, bad key) is a failed verification."""
    trust = config.trust
    assert trust is not None and config.artifact is not None and config.signature is not None
    try:
        return verify_model(
            config.artifact, signature_path=config.signature,
            public_key_path=trust.public_key, cert_root_path=trust.cert_root, ignore_paths=config.ignore_paths,
        )
    except IntegrityInputError as exc:
        return _Failed(str(exc))
    except OSError as exc:
        return _Failed(f"cannot read the model: {exc}")


class _Failed:
    """A verification that could not even start: always invalid."""

    valid = False
    root_digest = None
    signer = None
    method = None
    differences: list = []

    def __init__(self, problem: str) -> None:
        self.problems = [problem]
