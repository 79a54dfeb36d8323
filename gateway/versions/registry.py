"""The version registry: every version of every model, in the state store, mirrored everywhere.

Versions named in the config are registered at start-up; more can be added at run time.
Adding a version never activates it. A version added at run time may name upstream
credentials only as `${ENV}` references, resolved on each replica from its own
environment: no secret is ever stored in the registry. It may name only the variables
its model's config allows (`models.{m}.versions_api.allowed_env`), checked before
anything is resolved or sent: whoever adds a version chooses where its headers go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.catalog import Catalog, upstream_ssl_context
from gateway.upstream.egress import proxy_for
from gateway.config import ModelConfig, VersionConfig
from gateway.configfile import ConfigError, describe_errors, env_references, interpolate
from gateway.control import keys
from gateway.control.state import ControlState
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.integrity.gate import IntegrityGate
from gateway.recorder import Recorder
from gateway.store import StaleWrite

log = logging.getLogger("gateway.versions")


def public_spec(config: VersionConfig) -> dict[str, Any]:
    """What the registry shows of a version: header names, never their values."""
    spec = config.model_dump(mode="json", exclude_none=True)
    spec["headers"] = {name: "[set]" for name in config.headers}
    return spec


class _SpecOutline(BaseModel):
    """What is checked before a run-time spec is walked: an object whose headers map names to text."""

    model_config = ConfigDict(extra="allow", strict=True)
    headers: dict[str, str] = {}


def _spec_problems(exc: ValidationError) -> str:
    return "; ".join(f"spec.{line}" for line in describe_errors(exc))


class Registry:
    def __init__(self, state: ControlState, catalog: Catalog, integrity: IntegrityGate, recorder: Recorder, *,
                 configured: Mapping[str, ModelConfig], confirm_timeout: float,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.state = state
        self.catalog = catalog
        self.integrity = integrity
        self.recorder = recorder
        self.configured = configured
        self.confirm_timeout = confirm_timeout
        self.spawn = spawn

    async def seed_from_config(self) -> None:
        """Record the config's versions, so the history shows every version that ever served."""
        for model, mc in self.configured.items():
            for version, vc in mc.versions.items():
                key = keys.registration(model, version)
                doc = {"spec": public_spec(vc), "source": "config", "added_at": time.time(), "added_by": "config",
                       "reason": "listed in the config"}
                current = self.state.doc(key)
                if current is not None and current.get("spec") == doc["spec"]:
                    continue
                try:
                    await self.state.change(key, doc, expect_rev=(current or {}).get("rev", 0), confirm_timeout=0.0,
                                               audit={"action": "register", "actor": "config", "reason": doc["reason"],
                                                      "model": model, "version": version})
                except StaleWrite:
                    pass  # another replica registered it meanwhile

    async def add(self, model: str, version: str, raw_spec: dict[str, Any], *, actor: str, reason: str) -> dict[str, Any]:
        if model not in self.catalog.models:
            raise NotFound(f"unknown model {model!r}; known models: {', '.join(sorted(self.catalog.models))}")
        spec = self._validate(model, raw_spec)
        key = keys.registration(model, version)
        doc = {"spec": raw_spec, "source": "api", "added_at": time.time(), "added_by": actor, "reason": reason}
        try:
            await self.state.change(key, doc, expect_rev=0, confirm_timeout=self.confirm_timeout,
                                       audit={"action": "register", "actor": actor, "reason": reason,
                                              "model": model, "version": version})
        except StaleWrite:
            raise Conflict(f"model {model} already has a version {version!r}; versions are never replaced") from None
        await self.recorder.action("register_version", actor=actor, reason=reason, model=model, version=version,
                                      spec=public_spec(spec))
        return {"model": model, "version": version, **self.describe(model, version)}

    def _validate(self, model: str, raw_spec: Any) -> VersionConfig:
        """A run-time spec as a version, or a 400; nothing is read from the environment before it may be."""
        try:
            outline = _SpecOutline.model_validate(raw_spec)
        except ValidationError as exc:
            raise BadRequest(_spec_problems(exc)) from None
        self._check_env_references(model, raw_spec)
        for name, value in outline.headers.items():
            if value and "${" not in value:
                raise BadRequest(f"spec.headers.{name}: give upstream credentials as a ${{ENV_VAR}} reference, "
                                 "resolved on each replica; secrets are not stored in the registry")
        problems: list[str] = []
        resolved = interpolate(raw_spec, (), problems, "spec")
        if problems:
            raise BadRequest("; ".join(p.replace("spec: ", "spec.", 1) for p in problems))
        try:
            config = VersionConfig.model_validate(resolved)
        except ValidationError as exc:
            raise BadRequest(_spec_problems(exc)) from None
        try:
            upstream_ssl_context(config.tls)
        except ValueError as exc:
            raise BadRequest(f"spec.tls: {exc}") from None
        try:
            for url in config.urls:
                proxy_for(url)
        except ValueError as exc:
            raise BadRequest(f"spec.upstream: {exc} (from the gateway's environment)") from None
        return config

    def _check_env_references(self, model: str, raw_spec: Any) -> None:
        configured = self.configured.get(model)
        allowed = set(configured.versions_api.allowed_env) if configured else set()
        problems = []
        for where, name in env_references(raw_spec):
            if name is None:
                problems.append(f"spec.{where}: `${{` starts no ${{VAR}} or ${{VAR:-default}} reference")
            elif name not in allowed:
                problems.append(f"spec.{where}: environment variable {name} is not allowed for versions added at run "
                                f"time; allow it in the config under models.{model}.versions_api.allowed_env")
        if problems:
            raise BadRequest("; ".join(problems))

    def on_state_change(self, key: keys.Key, old: dict | None, new: dict) -> None:
        """A version added at run time (on any replica) becomes routable here."""
        if not isinstance(key, keys.Registration) or new.get("source") != "api":
            return
        model, version = key.model, key.version
        if version in self.catalog.models.get(model, _NONE).versions:
            return
        try:
            config = self._validate(model, new["spec"])
        except (BadRequest, ConfigError) as exc:
            log.error("cannot route to version %s/%s here: %s", model, version, getattr(exc, "message", exc))
            return
        self.catalog.add_version(model, version, config)
        self.integrity.register(model, version, config)
        self.spawn(self.integrity.verify(model, version, reason="registered"))

    def describe(self, model: str, version: str) -> dict[str, Any]:
        doc = self.state.doc(keys.registration(model, version)) or {}
        route = self.catalog.models.get(model, _NONE).versions.get(version)
        return {
            "upstream": route.upstream if route else None,
            "active": self.state.active.get(model) == version,
            "source": doc.get("source"),
            "added_at": doc.get("added_at"),
            "added_by": doc.get("added_by"),
            **self.integrity.describe(model, version),
        }

    def models(self) -> list[str]:
        return list(self.catalog.models)

    def active(self, model: str) -> str | None:
        return self.state.active.get(model)

    def versions(self, model: str) -> dict[str, dict[str, Any]]:
        if model not in self.catalog.models:
            raise NotFound(f"unknown model {model!r}")
        return {version: self.describe(model, version) for version in self.catalog.models[model].versions}


class _NoModel:
    versions: dict = {}


_NONE = _NoModel()
