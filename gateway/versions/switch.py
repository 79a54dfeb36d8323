"""Activating a version and rolling back: checked first, then one compare-and-set on the pointer.

Checks run in order and nothing changes when one fails: the target exists; its files
verify now (a fresh hash, not a cached verdict); its upstream answers; the model's smoke
dataset, if the policy names one, passes against the target's upstream. Then a snapshot
of the state being left is recorded as evidence, and the active pointer moves with a
compare-and-set: of two concurrent switches exactly one wins. The call answers once every
live replica serves the new version; a request already running finishes on the version
it started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest, Conflict, NotFound
from gateway.integrity.gate import FAILED, UNSIGNED, VERIFIED
from gateway.proxy.upstream import UpstreamError
from gateway.store import StaleWrite
from gateway.versions.smoke import load_dataset, run_smoke

if TYPE_CHECKING:
    from gateway.context import Gateway


class CheckFailed(Conflict):
    type = "check_failed"


class Switcher:
    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw

    async def activate(self, model: str, version: str, *, actor: str, reason: str, action: str = "activate") -> dict[str, Any]:
        self._require(model, reason)
        current_doc = self.gw.state.docs.get(f"active/{model}") or {}
        current = current_doc.get("version")
        if version not in self.gw.catalog.models[model].versions:
            raise NotFound(f"model {model} has no version {version!r}; versions: {', '.join(self.gw.catalog.models[model].versions)}")
        if version == current:
            raise Conflict(f"{model} {version} is already active", detail={"active": current})
        checks = await self.run_checks(model, version)
        failed = next((c for c in checks if not c["ok"]), None)
        if failed is not None:
            raise CheckFailed(f"check `{failed['check']}` failed for {model} {version}: {failed['detail']}; nothing changed",
                              detail={"checks": checks, "active": current})
        return await self._switch(model, current, current_doc, version, actor=actor, reason=reason, action=action, checks=checks)

    async def rollback(self, model: str, *, to: str | None, actor: str, reason: str) -> dict[str, Any]:
        """To `to`, or to the most recent previously active version that still passes every check."""
        self._require(model, reason)
        if to is not None:
            return await self.activate(model, to, actor=actor, reason=reason, action="rollback")
        current = self.gw.state.active.get(model)
        tried: list[dict[str, Any]] = []
        for candidate in await self.previously_active(model):
            if candidate == current or candidate not in self.gw.catalog.models[model].versions:
                continue
            checks = await self.run_checks(model, candidate)
            if all(c["ok"] for c in checks):
                doc = self.gw.state.docs.get(f"active/{model}") or {}
                return await self._switch(model, current, doc, candidate, actor=actor, reason=reason, action="rollback",
                                          checks=checks, skipped=tried)
            tried.append({"version": candidate, "checks": checks})
        raise Conflict(f"{model} has no earlier version that passes its checks; nothing changed",
                       detail={"active": current, "tried": tried})

    async def previously_active(self, model: str) -> list[str]:
        """Versions that were active before, most recent first, each once."""
        seen: list[str] = []
        for entry in await self.gw.store.audit_log(key_prefix=f"active/{model}", limit=1000):
            for name in (entry.get("from"), entry.get("to"), entry.get("version")):
                if name and name not in seen:
                    seen.append(name)
        return seen

    async def history(self, model: str) -> list[dict[str, Any]]:
        return await self.gw.store.audit_log(key_prefix=f"active/{model}", limit=1000)

    # checks ------------------------------------------------------------------------
    async def run_checks(self, model: str, version: str) -> list[dict[str, Any]]:
        checks: list[dict[str, Any]] = [{"check": "exists", "ok": True, "detail": f"{model} {version} is registered"}]
        steps = (self._verifies, self._answers, self._smoke)
        for step in steps:
            result = await step(model, version)
            if result is None:
                continue
            checks.append(result)
            if not result["ok"]:
                break
        return checks

    async def _verifies(self, model: str, version: str) -> dict[str, Any]:
        started = time.monotonic()
        verdict = await self.gw.integrity.verify(model, version, actor="pre-switch check", reason="pre-switch check")
        status = verdict["status"]
        ok = status == VERIFIED or (status == UNSIGNED and self.gw.integrity.serve_unsigned)
        detail = {VERIFIED: f"files match their signature (root digest {verdict.get('root_digest')})",
                  UNSIGNED: "unsigned; the policy serves unsigned versions" if ok else "unsigned; the policy requires signatures",
                  FAILED: "; ".join(verdict.get("problems", [])[:5]) or "verification failed"}.get(status, status)
        return {"check": "verifies", "ok": ok, "detail": detail, "status": status, "root_digest": verdict.get("root_digest"),
                "seconds": round(time.monotonic() - started, 3)}

    async def _answers(self, model: str, version: str) -> dict[str, Any]:
        """Asked over the same connection pool the version's traffic will use."""
        route = self.gw.catalog.models[model].versions[version]
        config = self.gw.integrity.versions.get((model, version))
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
        smoke = self.gw.model_policy(model).smoke
        if smoke is None:
            return None
        try:
            cases = load_dataset(smoke.dataset)
        except (OSError, ValueError) as exc:
            return {"check": "smoke", "ok": False, "detail": f"cannot read the smoke dataset: {exc}"}
        route = self.gw.catalog.models[model].versions[version]
        config = self.gw.integrity.versions.get((model, version))
        result = await run_smoke(route, config.tls if config else None, cases)
        ok = result.rate >= smoke.min_pass_rate
        return {"check": "smoke", "ok": ok, "passed": result.passed, "total": result.total, "rate": round(result.rate, 4),
                "min_pass_rate": smoke.min_pass_rate, "failures": result.failures,
                "detail": f"{result.passed}/{result.total} passed ({result.rate:.0%}; needs {smoke.min_pass_rate:.0%})"}

    # the switch --------------------------------------------------------------------
    async def _switch(self, model: str, current: str | None, current_doc: dict[str, Any], target: str, *, actor: str,
                      reason: str, action: str, checks: list[dict[str, Any]], skipped: list | None = None) -> dict[str, Any]:
        snapshot = self.snapshot(model, current)
        snapshot_record = await self.gw.recorder.action("snapshot_before_switch", actor=actor, reason=reason, model=model,
                                                        version=current, target=target, snapshot=snapshot)
        now = time.time()
        doc = {"version": target, "actor": actor, "reason": reason, "at": now}
        audit = {"action": action, "actor": actor, "reason": reason, "from": current, "to": target, "at": now,
                 "checks": [{k: v for k, v in c.items() if k in ("check", "ok", "detail")} for c in checks],
                 "snapshot_record": snapshot_record}
        try:
            change, confirmation = await self.gw.state.change(
                f"active/{model}", doc, audit=audit, expect_rev=current_doc.get("rev", 0),
                confirm_timeout=self.gw.policy.oversight.confirm_timeout,
            )
        except StaleWrite as exc:
            now_active = (exc.current or {}).get("version")
            await self.gw.recorder.action("switch_refused", actor=actor, reason=reason, model=model, target=target,
                                          why=f"another switch won (now {now_active})")
            raise Conflict(f"another switch of {model} won meanwhile: {now_active} is active; nothing changed",
                           detail={"active": now_active}) from None
        await self.gw.recorder.action(action, actor=actor, reason=reason, model=model, version_from=current, version_to=target,
                                      epoch=change.epoch, checks=audit["checks"])
        result = {"model": model, "action": action, "from": current, "to": target, "checks": checks, **confirmation.as_dict()}
        if skipped:
            result["skipped"] = skipped
        return result

    def snapshot(self, model: str, version: str | None) -> dict[str, Any]:
        """The state being left: what served, how well, under which rules."""
        gw = self.gw
        verdict = gw.state.docs.get(f"verify/{model}/{version}") or {}
        return {
            "version": version,
            "root_digest": verdict.get("root_digest"),
            "verification": verdict.get("status"),
            "levels": {"global": gw.state.global_level, "model": gw.state.model_levels.get(model), "effective": gw.state.level_for(model)},
            "config_sha256": _file_digest(gw.config.source),
            "policy": {"version": gw.policy.version, "digest": gw.policy.digest},
            "traffic": gw.metrics.summary(model, version) if version else {},
            "recent_requests": list(gw.dataplane.recent.get((model, version), ())) if gw.dataplane and version else [],
            "replica": gw.store.replica_id,
        }

    def _require(self, model: str, reason: str) -> None:
        if model not in self.gw.catalog.models:
            raise NotFound(f"unknown model {model!r}; known models: {', '.join(sorted(self.gw.catalog.models))}")
        if not reason or not reason.strip():
            raise BadRequest("a reason is required for every switch")


def _file_digest(path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    except OSError:
        return None
