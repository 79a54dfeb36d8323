"""Activating a version and rolling back: checked first, then one compare-and-set on the pointer.

Checks run in order and nothing changes when one fails: the target exists; its files
verify now (a fresh hash, not a cached verdict); its upstream answers; the model's smoke
dataset, if the policy names one, passes against the target's upstream. Then a snapshot
of the state being left is recorded as evidence, and the active pointer moves with a
compare-and-set: of two concurrent switches exactly one wins. The call answers once every
live replica serves the new version; a request already running finishes on the version
it started with.

While the model is paused (level 4) or a critical incident is open for it, only rollbacks
switch (`gateway.versions.freeze`). Every answer and its records say how long the switch
took and the exact reverse: the call that puts the version being left back.

A plain rollback goes back, never forward again: it picks the most recently active
version that passes its checks, skipping any version a rollback already left (until an
operator activates that version again).
"""

from __future__ import annotations

import asyncio
import time
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gateway.catalog import Catalog
from gateway.config import VersionConfig
from gateway.control import keys
from gateway.control.state import ControlState
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.integrity.gate import FAILED, UNSIGNED, VERIFIED
from gateway.policy import SmokeTest
from gateway.upstream import UpstreamError
from gateway.recorder import Recorder
from gateway.store import AuditTrail, StaleWrite
from gateway.versions.smoke import load_dataset, run_smoke
from gateway.versions.snapshot import Snapshots

if TYPE_CHECKING:
    from gateway.versions.freeze import DeploymentFreeze


log = logging.getLogger("gateway.versions")


class CheckFailed(Conflict):
    type = "check_failed"


class Verifier(Protocol):
    """What a switch needs of the integrity gate: a fresh verification, and each version's config."""

    serve_unsigned: bool
    versions: dict[tuple[str, str], VersionConfig]

    async def verify(self, model: str, version: str, *, actor: str = ..., reason: str = ...) -> dict[str, Any]: ...


class Switcher:
    def __init__(self, state: ControlState, catalog: Catalog, verifier: Verifier, audit: AuditTrail, recorder: Recorder,
                 snapshots: Snapshots, *, confirm_timeout: float, smoke: Mapping[str, SmokeTest | None]) -> None:
        self.state = state
        self.catalog = catalog
        self.verifier = verifier
        self.audit = audit
        self.recorder = recorder
        self.snapshots = snapshots
        self.confirm_timeout = confirm_timeout
        self.smoke = smoke
        self.freeze: DeploymentFreeze | None = None
        self._listeners: list[Callable[[dict[str, Any], str], Awaitable[None]]] = []

    def on_switch(self, listener: Callable[[dict[str, Any], str], Awaitable[None]]) -> None:
        """Awaited with each switch's answer and its actor once every replica serves it, before the switch answers
        (the post-rollback watch is in place when a rollback answers). A listener's failure never undoes a switch."""
        self._listeners.append(listener)

    def guard_with(self, freeze: "DeploymentFreeze") -> None:
        """Refuse activations (not rollbacks) while `freeze` says the model is paused."""
        self.freeze = freeze

    async def activate(self, model: str, version: str, *, actor: str, reason: str, action: str = "activate") -> dict[str, Any]:
        started = time.monotonic()
        self._require(model, reason)
        current_doc = self.state.doc(keys.active(model)) or {}  # read before the checks: the compare-and-set is against it
        current = current_doc.get("version")
        if version not in self.catalog.models[model].versions:
            raise NotFound(f"model {model} has no version {version!r}; versions: {', '.join(self.catalog.models[model].versions)}")
        if version == current:
            raise Conflict(f"{model} {version} is already active", detail={"active": current})
        if action != "rollback" and self.freeze is not None:
            await self.freeze.check(model, version)  # a refusal changes nothing, the evidence log included
        checks = await self.run_checks(model, version)
        failed = next((c for c in checks if not c["ok"]), None)
        if failed is not None:
            raise CheckFailed(f"check `{failed['check']}` failed for {model} {version}: {failed['detail']}; nothing changed",
                              detail={"checks": checks, "active": current})
        return await self._switch(model, current, current_doc, version, actor=actor, reason=reason, action=action,
                                  checks=checks, started=started)

    async def rollback(self, model: str, *, to: str | None, actor: str, reason: str) -> dict[str, Any]:
        """To `to`, or to the most recent earlier version that still passes every check."""
        started = time.monotonic()
        self._require(model, reason)
        if to is not None:
            return await self.activate(model, to, actor=actor, reason=reason, action="rollback")
        current_doc = self.state.doc(keys.active(model)) or {}  # read before the checks: the compare-and-set is against it
        current = current_doc.get("version")
        tried: list[dict[str, Any]] = []
        for candidate in await self.rollback_candidates(model):
            if candidate == current or candidate not in self.catalog.models[model].versions:
                continue
            checks = await self.run_checks(model, candidate)
            if all(c["ok"] for c in checks):
                return await self._switch(model, current, current_doc, candidate, actor=actor, reason=reason,
                                          action="rollback", checks=checks, skipped=tried, started=started)
            tried.append({"version": candidate, "checks": checks})
        raise Conflict(f"{model} has no earlier version that passes its checks; nothing changed",
                       detail={"active": current, "tried": tried})

    async def previously_active(self, model: str) -> list[str]:
        """Versions that were active before, most recent first, each once."""
        seen: list[str] = []
        for entry in await self.history(model):
            for name in (entry.get("from"), entry.get("to"), entry.get("version")):
                if name and name not in seen:
                    seen.append(name)
        return seen

    async def rollback_candidates(self, model: str) -> list[str]:
        """Previously active versions, most recent first, minus those a rollback left and nobody activated since."""
        left: set[str] = set()
        activated_since: set[str] = set()
        for entry in await self.history(model):  # newest first
            if entry.get("action") == "rollback" and entry.get("from") and entry["from"] not in activated_since:
                left.add(entry["from"])
            elif entry.get("action") == "activate" and entry.get("to"):
                activated_since.add(entry["to"])
        return [v for v in await self.previously_active(model) if v not in left]

    async def history(self, model: str) -> list[dict[str, Any]]:
        return await self.audit.audit_log(key_prefix=keys.active(model), limit=1000)

    def snapshot(self, model: str, version: str | None) -> dict[str, Any]:
        return self.snapshots.snapshot(model, version)

    # checks ------------------------------------------------------------------------
    async def run_checks(self, model: str, version: str) -> list[dict[str, Any]]:
        checks: list[dict[str, Any]] = [{"check": "exists", "ok": True, "detail": f"{model} {version} is registered"}]
        for step in (self._verifies, self._answers, self._smoke):
            result = await step(model, version)
            if result is None:
                continue
            checks.append(result)
            if not result["ok"]:
                break
        return checks

    async def _verifies(self, model: str, version: str) -> dict[str, Any]:
        started = time.monotonic()
        verdict = await self.verifier.verify(model, version, actor="pre-switch check", reason="pre-switch check")
        status = verdict["status"]
        ok = status == VERIFIED or (status == UNSIGNED and self.verifier.serve_unsigned)
        detail = {VERIFIED: f"files match their signature (root digest {verdict.get('root_digest')})",
                  UNSIGNED: "unsigned; the policy serves unsigned versions" if ok else "unsigned; the policy requires signatures",
                  FAILED: "; ".join(verdict.get("problems", [])[:5]) or "verification failed"}.get(status, status)
        return {"check": "verifies", "ok": ok, "detail": detail, "status": status, "root_digest": verdict.get("root_digest"),
                "seconds": round(time.monotonic() - started, 3)}

    async def _answers(self, model: str, version: str) -> dict[str, Any]:
        """Asked over the same connection pool the version's traffic will use."""
        route = self.catalog.models[model].versions[version]
        config = self.verifier.versions.get((model, version))
        path = (config.health_path if config else "/").encode()
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(route.pool.request(b"GET", path, route.extra_headers), 5.0)
            response.release()  # a body left unread closes the connection instead of reusing it
        except (UpstreamError, asyncio.TimeoutError) as exc:
            return {"check": "upstream", "ok": False, "detail": f"{route.upstream} does not answer: {exc or 'timeout'}"}
        ok = response.status < 500
        return {"check": "upstream", "ok": ok, "status": response.status, "ms": round((time.monotonic() - started) * 1000, 1),
                "detail": f"{route.upstream} answered {response.status}"}

    async def _smoke(self, model: str, version: str) -> dict[str, Any] | None:
        smoke = self.smoke.get(model)
        if smoke is None:
            return None
        return await self.smoke_test(model, version, smoke)

    async def smoke_test(self, model: str, version: str, smoke: SmokeTest) -> dict[str, Any]:
        """Run a known-good dataset against one version's own upstream (the pre-switch check; incident verification)."""
        try:
            cases = load_dataset(smoke.dataset)
        except (OSError, ValueError) as exc:
            return {"check": "smoke", "ok": False, "detail": f"cannot read the smoke dataset: {exc}"}
        route = self.catalog.models[model].versions[version]
        config = self.verifier.versions.get((model, version))
        result = await run_smoke(route, config.tls if config else None, cases)
        ok = result.rate >= smoke.min_pass_rate
        return {"check": "smoke", "ok": ok, "passed": result.passed, "total": result.total, "rate": round(result.rate, 4),
                "min_pass_rate": smoke.min_pass_rate, "failures": result.failures,
                "detail": f"{result.passed}/{result.total} passed ({result.rate:.0%}; needs {smoke.min_pass_rate:.0%})"}

    # the switch --------------------------------------------------------------------
    async def _switch(self, model: str, current: str | None, current_doc: dict[str, Any], target: str, *, actor: str,
                      reason: str, action: str, checks: list[dict[str, Any]], skipped: list | None = None,
                      started: float | None = None) -> dict[str, Any]:
        snapshot_record = await self.recorder.action("snapshot_before_switch", actor=actor, reason=reason, model=model,
                                                     version=current, target=target,
                                                     snapshot=self.snapshots.snapshot(model, current))
        now = time.time()
        doc = {"version": target, "actor": actor, "reason": reason, "at": now}
        reverse = reverse_of(model, current, target)
        audit = {"action": action, "actor": actor, "reason": reason, "from": current, "to": target, "at": now,
                 "reverse": reverse,
                 "checks": [{k: v for k, v in c.items() if k in ("check", "ok", "detail")} for c in checks],
                 "snapshot_record": snapshot_record}
        try:
            change, confirmation = await self.state.change(keys.active(model), doc, audit=audit,
                                                           expect_rev=current_doc.get("rev", 0),
                                                           confirm_timeout=self.confirm_timeout)
        except StaleWrite as exc:
            now_active = (exc.current or {}).get("version")
            await self.recorder.action("switch_refused", actor=actor, reason=reason, model=model, target=target,
                                       why=f"another switch won (now {now_active})")
            raise Conflict(f"another switch of {model} won meanwhile: {now_active} is active; nothing changed",
                           detail={"active": now_active}) from None
        seconds = round(time.monotonic() - started, 3) if started is not None else None
        await self.recorder.action(action, actor=actor, reason=reason, model=model, version_from=current, version_to=target,
                                   epoch=change.epoch, checks=audit["checks"], seconds=seconds, reverse=reverse)
        result = {"model": model, "action": action, "from": current, "to": target, "checks": checks,
                  "seconds": seconds, "reverse": reverse, **confirmation.as_dict()}
        if skipped:
            result["skipped"] = skipped
        for listener in self._listeners:
            try:
                await listener(result, actor)
            except Exception:
                log.exception("after the switch of %s to %s: a follow-up failed", model, target)
        return result

    def _require(self, model: str, reason: str) -> None:
        if model not in self.catalog.models:
            raise NotFound(f"unknown model {model!r}; known models: {', '.join(sorted(self.catalog.models))}")
        if not reason or not reason.strip():
            raise BadRequest("a reason is required for every switch")


def reverse_of(model: str, left: str | None, target: str) -> dict[str, Any] | None:
    """The exact call that undoes a switch from `left` to `target` (seed: "Prepare reverse rollback procedure").

    Going back to the version left is itself a rollback to a named version (`to`), which the
    deployment freeze allows and the checks still guard.
    """
    if left is None:
        return None
    return {"model": model, "from": target, "to": left, "http": f"POST /admin/models/{model}/rollback",
            "body": {"to": left, "reason": f"reverse the switch {left} -> {target}"},
            "cli": f"gateway rollback {model} --to {left} --reason \"reverse the switch {left} -> {target}\""}
