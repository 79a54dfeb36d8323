"""Reload without restart: `POST /admin/reload` and `SIGHUP` re-read the config and policy on every replica.

A reload first loads and validates the new files completely, with the loader `gateway
serve` and `gateway config check` use (`Gateway.from_files`), in a thread so the event
loop never waits on the disk. If anything is wrong — a schema problem, or a change to a
field that only a restart can apply — nothing changes, and the answer (or the log, for
SIGHUP) lists every problem. Otherwise the request is published as a control document
(`reload`): every live replica, this one included, re-reads *its own* files, checks them
the same way, swaps the new parts in on the event loop (built first, then one assignment
each: no request sees half a reload) and writes its result to the `reloads` collection.
The caller hears which replicas applied it, which refused it (and why), and which did
not answer in time. Each replica records `config_reloaded` (or `config_reload_refused`)
in its evidence log with who asked, why, and the digests of the files it applied.

What applies live (`LIVE_*`): the config's tokens (the bootstrap set; run-time tokens are
kept), versions added to or removed from a configured model (routes built, integrity
registered and verified; the active version cannot be removed), `active` and
`versions_api`; the policy's incident triggers, its review timings, each model's
thresholds (sample rates, confidence threshold and source, hold waits, baselines), its
version and digest. What needs a restart: everything else, named field by field
(`restart_needed`), because other parts are built around it at start: the listener, the
store, the data and evidence directories and their keys, limits and timeouts, the set of
models (levels, counters and policies are per model), a version's spec (versions are
never replaced), and the rest of the policy (evidence, integrity, oversight, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from gateway.config import Config
from gateway.configfile import ConfigError
from gateway.control import keys
from gateway.control.state import ControlState
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.recorder import Recorder

log = logging.getLogger("gateway.reload")

RELOADS = "reloads"  # collection: one result per replica per reload
LIVE_CONFIG = ("tokens", "models")  # models: versions added or removed (not models), `active`, `versions_api`
LIVE_POLICY = ("triggers", "review", "defaults", "models", "version", "digest")
LIVE_REVIEW = ("timeout", "on_expiry", "max_hold_wait", "claim_lease", "keepalive")
LIVE_MODEL_POLICY = ("sample_rate", "confidence_threshold", "confidence", "hold_wait", "latency_baseline_ms",
                     "baseline_accuracy")
_RESTART = "this needs a restart"


class ReloadRefused(GatewayError):
    status, type = 422, "reload_refused"


Loaded = tuple[Config, Policy, str, str]  # config, policy, config file digest, policy digest


def restart_needed(old: Config, old_policy: Policy, new: Config, new_policy: Policy, *,
                   active: Mapping[str, str] | None = None) -> list[str]:
    """Every changed field a reload cannot apply live, each named with what to do instead."""
    problems = []
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    for name in sorted(set(before) | set(after)):
        if name not in LIVE_CONFIG and before.get(name) != after.get(name):
            problems.append(f"config: {name}: changed; {_RESTART} (a reload applies tokens and models' versions)")
    for model in sorted(set(old.models) ^ set(new.models)):
        problems.append(f"config: models.{model}: {'added' if model in new.models else 'removed'}; adding or removing "
                        f"a model needs a restart (a reload adds and removes versions of the models there are)")
    for model in sorted(set(old.models) & set(new.models)):
        was, now = old.models[model].versions, new.models[model].versions
        for version in sorted(set(was) & set(now)):
            if was[version] != now[version]:
                problems.append(f"config: models.{model}.versions.{version}: changed; a version is never replaced: "
                                f"add it under a new name (or restart)")
        for version in sorted(set(was) - set(now)):
            if (active or {}).get(model) == version:
                problems.append(f"config: models.{model}.versions.{version}: removed, but it is the active version; "
                                f"switch {model} to another version first")
    before, after = old_policy.model_dump(mode="json"), new_policy.model_dump(mode="json")
    for name in sorted(set(before) | set(after)):
        if name not in LIVE_POLICY and before.get(name) != after.get(name):
            problems.append(f"policy: {name}: changed; {_RESTART} (a reload applies triggers, review timings and "
                            f"models' thresholds)")
    for name, was, now in (("triggers.evaluate_every", old_policy.triggers.evaluate_every,
                            new_policy.triggers.evaluate_every),
                           ("triggers.evidence.check_every", old_policy.triggers.evidence.check_every,
                            new_policy.triggers.evidence.check_every)):
        if was != now:
            problems.append(f"policy: {name}: changed; {_RESTART} (the monitor's loop runs at it)")
    was_review, now_review = old_policy.review.model_dump(mode="json"), new_policy.review.model_dump(mode="json")
    for name in sorted(set(was_review) | set(now_review)):
        if name not in LIVE_REVIEW and was_review.get(name) != now_review.get(name):
            problems.append(f"policy: review.{name}: changed; {_RESTART}")
    for model in sorted(set(old.models) & set(new.models)):
        was_model = old_policy.for_model(model).model_dump(mode="json")
        now_model = new_policy.for_model(model).model_dump(mode="json")
        for name in sorted(set(was_model) | set(now_model)):
            if name not in LIVE_MODEL_POLICY and was_model.get(name) != now_model.get(name):
                problems.append(f"policy: {name} of model {model} (defaults or models.{model}): changed; {_RESTART} "
                                f"(live: {', '.join(LIVE_MODEL_POLICY)})")
    return problems


class Reloader:
    def __init__(self, state: ControlState, store: Any, recorder: Recorder, *, load: Callable[[], Loaded],
                 current: Callable[[], tuple[Config, Policy]], problems: Callable[[Config, Policy], list[str]],
                 apply: Callable[[Config, Policy], None],
                 confirm_timeout: float, spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.state = state
        self.store = store  # Collections: each replica's result
        self.recorder = recorder
        self.load = load  # blocking: run in a thread
        self.current = current
        self.problems = problems  # what this replica cannot apply live (`restart_needed`, and more it knows)
        self.apply = apply  # on the event loop, no await: atomic from the request path's view
        self.confirm_timeout = confirm_timeout
        self.spawn = spawn
        self._lock = asyncio.Lock()
        self._started = False
        self._seen: set[str] = set()
        self._signals: asyncio.AbstractEventLoop | None = None

    # lifecycle --------------------------------------------------------------------
    def start(self, *, handle_sighup: bool = True) -> None:
        """From now on, follow reload requests (one made before this replica started is in the files it read)."""
        current = self.state.doc(keys.RELOAD)
        if current is not None:
            self._seen.add(current.get("id", ""))
        self._started = True
        if handle_sighup:
            loop = asyncio.get_running_loop()
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.on_sighup()))
                self._signals = loop
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                pass

    def stop(self) -> None:
        if self._signals is not None:
            self._signals.remove_signal_handler(signal.SIGHUP)
            self._signals = None

    # asking ---------------------------------------------------------------------
    async def request(self, *, actor: str, reason: str) -> dict[str, Any]:
        """Check this replica's files, then ask every replica to reload; answers with what each did."""
        try:
            _, _, config_digest, policy_digest = await self._check()
        except ReloadRefused as exc:  # nothing changes anywhere; who tried is on record
            await self.recorder.action("config_reload_refused", actor=actor, reason=reason, reload=None,
                                       problems=(exc.detail or {}).get("problems", []))
            raise
        reload_id = uuid.uuid4().hex[:16]
        doc = {"id": reload_id, "actor": actor, "reason": reason, "at": time.time(), "origin": self.state.replica_id}
        audit = {"action": "config_reload", "actor": actor, "reason": reason, "reload": reload_id, "at": doc["at"]}
        _, confirmation = await self.state.change(keys.RELOAD, doc, audit=audit, confirm_timeout=self.confirm_timeout)
        replicas = sorted(set(confirmation.replicas) | {self.state.replica_id})
        results: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + self.confirm_timeout + 5.0  # reading and checking the files takes a moment
        while True:
            for entry in await self.store.query(RELOADS, where={"reload": reload_id}, limit=1000):
                results[entry["replica"]] = entry
            if set(replicas) <= set(results) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        applied = sorted(r for r, e in results.items() if e.get("ok"))
        refused = {r: e.get("problems", []) for r, e in sorted(results.items()) if not e.get("ok")}
        out: dict[str, Any] = {"reload": reload_id, "status": "applied" if len(applied) == len(replicas) else "partial",
                               "config_digest": config_digest, "policy_digest": policy_digest,
                               "applied_by": applied, "replicas": replicas}
        out["changes"] = {r: e.get("changes", []) for r, e in sorted(results.items()) if e.get("ok")}
        if refused:
            out["refused_by"] = refused
        missing = sorted(set(replicas) - set(results))
        if missing:
            out["unconfirmed"] = missing
        return out

    async def on_sighup(self) -> None:
        log.info("SIGHUP: reloading the config and policy")
        try:
            result = await self.request(actor="signal:SIGHUP", reason="SIGHUP")
        except ReloadRefused as exc:
            log.error("SIGHUP: reload refused, nothing changed: %s", "; ".join((exc.detail or {}).get("problems", [])))
            return
        except Exception:
            log.exception("SIGHUP: reload failed")
            return
        log.info("SIGHUP: reload %s %s on %d of %d replica(s)", result["reload"], result["status"],
                 len(result["applied_by"]), len(result["replicas"]))

    # following ------------------------------------------------------------------
    def on_state_change(self, key: keys.Key, old: dict[str, Any] | None, doc: dict[str, Any]) -> None:
        if not isinstance(key, keys.Reload) or not self._started or doc.get("id") in self._seen:
            return
        self._seen.add(doc["id"])
        self.spawn(self._reload_here(doc))

    async def _reload_here(self, doc: dict[str, Any]) -> None:
        replica = self.state.replica_id
        entry: dict[str, Any] = {"id": f"{doc['id']}/{replica}", "reload": doc["id"], "replica": replica, "at": time.time()}
        try:
            entry.update(await self.reload_local(actor=doc.get("actor", "?"), reason=doc.get("reason", ""),
                                                 reload_id=doc["id"]))
        except ReloadRefused as exc:
            entry.update(ok=False, problems=(exc.detail or {}).get("problems", [exc.message]))
        except Exception as exc:  # a defect: this replica keeps what it had, and says so
            log.exception("reload %s failed", doc["id"])
            entry.update(ok=False, problems=[f"{exc.__class__.__name__}: {exc}"])
        try:
            await self.store.insert(RELOADS, entry["id"], entry)
        except Exception:
            log.exception("could not report reload %s", doc["id"])

    async def reload_local(self, *, actor: str, reason: str, reload_id: str | None = None) -> dict[str, Any]:
        """Re-read this replica's files and apply them, or change nothing (`ReloadRefused` with every problem)."""
        async with self._lock:
            try:
                config, policy, config_digest, policy_digest = await self._check()
            except ReloadRefused as exc:
                await self.recorder.action("config_reload_refused", actor=actor, reason=reason, reload=reload_id,
                                           problems=(exc.detail or {}).get("problems", []))
                raise
            old_config, old_policy = self.current()
            self.apply(config, policy)
            changes = _changes(old_config, old_policy, config, policy)
            log.info("config reloaded (%s)", ", ".join(changes) or "no changes",
                     extra={"actor": actor, "reload": reload_id})
            await self.recorder.action("config_reloaded", actor=actor, reason=reason, reload=reload_id,
                                       config_digest=config_digest, policy_digest=policy_digest,
                                       policy_version=policy.version, changes=changes)
            return {"ok": True, "config_digest": config_digest, "policy_digest": policy_digest, "changes": changes}

    async def _check(self) -> Loaded:
        try:
            loaded = await asyncio.to_thread(self.load)
        except ConfigError as exc:
            problems = list(exc.problems)
        else:
            problems = self.problems(loaded[0], loaded[1])
            if not problems:
                return loaded
        log.error("reload refused, nothing changed: %s", "; ".join(problems))
        raise ReloadRefused(f"reload refused, nothing changed: {len(problems)} problem(s): {problems[0]}",
                            detail={"problems": problems})


def _changes(old: Config, old_policy: Policy, new: Config, new_policy: Policy) -> list[str]:
    """What a reload changed, in words an operator reads in the evidence log."""
    out = []
    before: Mapping[str, Any] = {t.id: t for t in old.tokens}
    after: Mapping[str, Any] = {t.id: t for t in new.tokens}
    out += [f"token added: {t}" for t in sorted(set(after) - set(before))]
    out += [f"token removed: {t}" for t in sorted(set(before) - set(after))]
    out += [f"token changed: {t}" for t in sorted(set(before) & set(after)) if before[t] != after[t]]
    for model in sorted(set(old.models) & set(new.models)):
        was, now = old.models[model].versions, new.models[model].versions
        out += [f"version added: {model}/{v}" for v in now if v not in was]
        out += [f"version removed: {model}/{v}" for v in was if v not in now]
    if old_policy.review != new_policy.review:
        out.append("policy review")
    if any(old_policy.for_model(m) != new_policy.for_model(m) for m in new.models):
        out.append("policy model thresholds")
    if old_policy.triggers != new_policy.triggers:
        out.append("policy triggers")
    if old_policy.version != new_policy.version:
        out.append(f"policy version: {old_policy.version} -> {new_policy.version}")
    return out


def file_digest(path: Any) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
