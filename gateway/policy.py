"""Oversight policy: the thresholds and rules, as data.

A policy file lives in `policies/`. It may name a base with `extends:` (a path relative
to itself) and override only what differs; mappings are merged key by key. A relative
`extends:` with no such file beside the policy names a policy shipped with the gateway
(`extends: default.yaml`, see `gateway.policies_data`): a file beside it wins. Every
decision records the policy's `version`, so an auditor knows which rules applied.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.configfile import ConfigError, Seconds, describe_errors, read_yaml, resolve_path
from gateway.policies_data import default_policy, shipped, shipped_folder

Level = Annotated[int, Field(ge=0, le=4)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfidenceSource(_Strict):
    """Where a model's answer says how sure it is."""

    source: Literal["json_pointer", "header", "logprobs"]
    pointer: str | None = Field(None, description="JSON pointer into the response body (json_pointer)")
    header: str | None = Field(None, description="response header name (header)")

    @model_validator(mode="after")
    def _needs(self) -> "ConfidenceSource":
        if self.source == "json_pointer" and not (self.pointer is not None and (self.pointer == "" or self.pointer.startswith("/"))):
            raise ValueError("source json_pointer needs `pointer`, a JSON pointer such as /confidence")
        if self.source == "header" and not self.header:
            raise ValueError("source header needs `header`, a response header name")
        return self


class SmokeTest(_Strict):
    dataset: Path
    min_pass_rate: Rate = 0.95


class Fairness(_Strict):
    group_pointer: str = Field(description="JSON pointer to the group attribute in the request")
    outcome_pointer: str = Field(description="JSON pointer to the outcome in the response")
    favourable: Any = Field(description="the outcome value that counts as favourable")


class HoldWait(_Strict):
    """How long a client that sent no `Prefer` header waits, connection open, for the human's decision."""

    openai: Seconds | None = Field(None, description="/v1 routes: OpenAI clients cannot read a 202, so they wait; "
                                                     "then 423 with the ticket")
    generic: Seconds | None = Field(None, description="/models routes: then 202 with the ticket (0: at once)")


class OutputCheck(_Strict):
    """A classifier the gateway asks about a model's answers, in the OpenAI moderations shape.

    `POST {url}/v1/moderations` with `{"model", "input"}`, answered `{"results": [{"flagged", ...}]}`:
    what OpenAI, Llama Guard servers and other moderation servers expose, so any of them fits.
    """

    url: str = Field(pattern=r"^https?://", description="the classifier's server root; the gateway posts to {url}/v1/moderations")
    model: str | None = Field(None, description="the `model` field sent to the classifier (e.g. a Llama Guard name)")
    sample_rate: Rate = Field(1.0, description="fraction of answers checked")
    blocking: bool = Field(False, description="at level >= 2, check before releasing; a flagged or unchecked answer is held")
    timeout: Seconds = Field(2.0, gt=0, description="how long one check may take (blocking: then held, fail closed)")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="the environment variable holding the classifier's bearer token, if it "
                                                "needs one (the policy names the variable, never the secret)")


class ReviewField(_Strict):
    """A field of a generic JSON answer that a reviewer decides: the console shows it as a form field."""

    pointer: str = Field(pattern=r"^/", description="JSON pointer into the answer, such as /decision")
    values: tuple[str | int | float | bool, ...] | None = Field(
        None, min_length=1, description="the values a reviewer may choose (a select); unset: free text")
    label: str | None = Field(None, description="what the console calls it (default: the pointer)")


class ModelPolicy(_Strict):
    """Per-model rules; anything left out comes from `defaults`."""

    latency_baseline_ms: float | None = Field(None, gt=0, description="normal p50; default: learned from the model's traffic")
    baseline_accuracy: Rate | None = Field(None, description="expected accuracy; default: learned from earlier feedback")
    feedback_window: Seconds | None = Field(None, description="how long POST /v1/feedback is accepted after a request; "
                                            "off when unset (the gateway then remembers nothing per request)")
    sample_rate: dict[Level, Rate] | None = None
    confidence_threshold: Rate | None = None
    confidence: ConfidenceSource | None = None
    smoke: SmokeTest | None = None
    fairness: Fairness | None = None
    published_min_accuracy: Rate | None = None
    redact_body: tuple[str, ...] | None = Field(None, description="JSON pointers removed from recorded bodies")
    hold_wait: HoldWait | None = None
    verification: SmokeTest | None = Field(None, description="the known-good dataset an incident's independent test "
                                           "runs (default: `smoke`)")
    subject_pointer: str | None = Field(None, description="JSON pointer to the subject's identifier in the request "
                                        "(e.g. /applicant/id): named in the affected-individuals report")
    output_check: OutputCheck | None = Field(None, description="a moderation classifier for the answers; off when unset")
    review_fields: tuple[ReviewField, ...] | None = Field(None, description="the answer's fields a reviewer decides, "
                                                          "shown as a form in the console (generic JSON models)")


# No thresholds are defaulted here: `policies/default.yaml` is where they are written.


class Oversight(_Strict):
    initial_level: Level
    record_all_from_level: Level
    two_person_lowering: bool
    max_staleness: Seconds
    on_state_loss: Level
    end_streams_on_pause: bool
    confirm_timeout: Seconds
    on_volatile_store: Literal["warn", "refuse"] = Field(
        "warn", description="a Redis store that would lose acknowledged tickets on a restart: warn, or refuse to start")


class Review(_Strict):
    timeout: Seconds
    on_expiry: Literal["reject", "release"]
    max_hold_wait: Seconds
    claim_lease: Seconds
    keepalive: Seconds = Field(gt=0, description="a held stream gets an SSE comment this often while it waits")
    retry_window: Seconds = Field(description="a retry of a held request attaches to its ticket within this")
    idempotency_window: Seconds = Field(description="an Idempotency-Key names the same ticket within this")


class Integrity(_Strict):
    reverify_interval: Seconds
    serve_unsigned: bool


class Evidence(_Strict):
    fsync_interval: Seconds
    checkpoint_every: int = Field(gt=0)
    checkpoint_interval: Seconds
    witness_interval: Seconds = Field(1.0, gt=0, description="how often a replica witnesses (cosigns) the others' logs")
    retention: Seconds
    redact_headers: tuple[str, ...]

    @field_validator("redact_headers")
    @classmethod
    def _lower(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n.lower() for n in names)


Severity = Literal["low", "medium", "high", "critical"]


class Trigger(_Strict):
    severity: Severity
    raise_to: Level | None = Field(description="raise the model's level to this (never lowers); null: notify only")
    rollback: bool = Field(False, description="also roll back to the last good version (its checks apply)")
    retro_review: bool = Field(False, description="also queue the window's recorded decisions for human review")
    revoke_token: bool = Field(False, description="also revoke the token the finding names (security triggers)")


class AccuracyDrop(Trigger):
    threshold_pct: float = Field(gt=0)
    window: Seconds
    min_samples: int = Field(ge=1)


class ErrorRate(Trigger):
    threshold: Rate
    window: Seconds
    min_requests: int = Field(ge=1)


class Latency(Trigger):
    factor: float = Field(gt=1)
    window: Seconds
    baseline_window: Seconds
    min_requests: int = Field(ge=1)


class Downtime(Trigger):
    after: Seconds


class DisparateImpact(Trigger):
    threshold: Rate
    window: Seconds
    min_per_group: int = Field(ge=1)
    confidence: float = Field(gt=0, lt=1)


class FnrGap(Trigger):
    threshold: Rate
    window: Seconds
    min_per_group: int = Field(ge=1)


class AuthFailures(Trigger):
    threshold: int = Field(ge=1)
    window: Seconds


class EvidenceCheck(Trigger):
    check_every: Seconds


Reason = Literal["gibberish", "harmful", "contradiction", "false", "biased", "other"]
"""Why a reviewer found an answer wrong (a verdict's `reason`)."""
REASONS: tuple[str, ...] = get_args(Reason)


class OutputQuality(Trigger):
    """Reviewers' verdicts: the share of reviewed answers found wrong for one of `reasons`."""

    threshold: Rate
    window: Seconds
    min_samples: int = Field(ge=1)
    reasons: tuple[Reason, ...]


class OutputCheckTrigger(Trigger):
    """The output check: the share of checked answers the classifier flagged."""

    threshold: Rate
    window: Seconds
    min_samples: int = Field(ge=1)


class UserReports(Trigger):
    """Users' reports: how many distinct callers reported a model's answers."""

    threshold: int = Field(ge=1)
    window: Seconds


class UsersAffected(Trigger):
    """The share of distinct callers with at least one failed request."""

    threshold: Rate
    window: Seconds
    min_users: int = Field(ge=1)


class GroupShift(Trigger):
    """A group's selection rate against the same model's previous window of the same length."""

    threshold: Rate
    window: Seconds
    min_per_group: int = Field(ge=1)
    confidence: float = Field(gt=0, lt=1)


class AccuracyGapShift(Trigger):
    """The gap between groups' accuracy against the previous window's gap."""

    threshold: Rate
    window: Seconds
    min_per_group: int = Field(ge=1)
    confidence: float = Field(gt=0, lt=1)


class SuspiciousAccess(Trigger):
    """One token's volume or breadth against its own baseline."""

    window: Seconds
    baseline_window: Seconds
    factor: float = Field(gt=1)
    min_requests: int = Field(ge=1)
    min_targets: int = Field(ge=1)


class Triggers(_Strict):
    evaluate_every: Seconds
    accuracy_drop: AccuracyDrop
    accuracy_drop_cumulative: AccuracyDrop
    error_rate: ErrorRate
    latency: Latency
    downtime: Downtime
    disparate_impact: DisparateImpact
    fnr_gap: FnrGap
    integrity: Trigger
    auth_failures: AuthFailures
    evidence: EvidenceCheck
    output_quality: OutputQuality
    output_check: OutputCheckTrigger
    user_reports: UserReports
    users_affected: UsersAffected
    group_shift: GroupShift
    accuracy_gap_shift: AccuracyGapShift
    suspicious_access: SuspiciousAccess


class Notifications(_Strict):
    template: str = Field(description="file in policies/templates/ (Jinja2) the messages are rendered from")
    retry_max_seconds: Seconds
    give_up_after: Seconds


class IncidentResponse(_Strict):
    """What the gateway does for an open incident beyond containment (seed: verification, post-rollback)."""

    verify_on_open: bool = Field(description="run the known-good dataset against the live and the previous version")
    replica_wait: Seconds = Field(description="how long the verification waits for every replica's figures")
    post_rollback_watch: Seconds = Field(description="after a rollback: how long the model stays at >= watch_level "
                                         "before the comparison with the pre-incident baseline is attached")
    watch_level: Level = Field(description="the level the watch raises the model to (never lowers one)")
    retro_review_limit: int = Field(ge=1, description="the most decisions one retro-review queues")


_INCIDENT_RESPONSE = {"verify_on_open": True, "replica_wait": 2.0, "post_rollback_watch": 3600.0, "watch_level": 1,
                      "retro_review_limit": 1000}  # as in policies/default.yaml, for policies written before it


class Policy(_Strict):
    version: str = Field(min_length=1)
    oversight: Oversight
    review: Review
    integrity: Integrity
    evidence: Evidence
    defaults: ModelPolicy
    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    triggers: Triggers
    notifications: Notifications
    incidents: IncidentResponse = Field(default_factory=lambda: IncidentResponse.model_validate(_INCIDENT_RESPONSE))
    digest: str = Field("", description="SHA-256 of the merged policy, set by the loader")
    folders: tuple[str, ...] = Field((), description="the policy file's folder and those of the files it extends")

    @model_validator(mode="after")
    def _defaults_complete(self) -> "Policy":
        d = self.defaults
        missing = [n for n in ("sample_rate", "confidence_threshold", "confidence", "hold_wait") if getattr(d, n) is None]
        if d.hold_wait is not None and (d.hold_wait.openai is None or d.hold_wait.generic is None):
            missing.append("hold_wait.openai and hold_wait.generic")
        if missing:
            raise ValueError(f"defaults must set {', '.join(missing)}")
        return self

    def for_model(self, model: str) -> "EffectiveModelPolicy":
        override = self.models.get(model)
        merged = self.defaults.model_dump()
        if override is not None:
            for key, value in override.model_dump(exclude_none=True).items():
                merged[key] = {**merged[key], **value} if key in _MERGED and merged.get(key) else value
        return EffectiveModelPolicy.model_validate(merged)


_MERGED = ("sample_rate", "hold_wait")  # a model's policy overrides these key by key


class EffectiveHoldWait(HoldWait):
    openai: Seconds
    generic: Seconds


class EffectiveModelPolicy(ModelPolicy):
    sample_rate: dict[Level, Rate]
    confidence_threshold: Rate
    confidence: ConfidenceSource
    hold_wait: EffectiveHoldWait

    def rate_at(self, level: int) -> float:
        """Post-hoc sampling rate at `level`; levels without a rate use the highest lower one."""
        rate = 0.0
        for lvl in sorted(self.sample_rate):
            if lvl <= level:
                rate = self.sample_rate[lvl]
        return rate


def load_policy(path: str | Path) -> Policy:
    """Read a policy file (following `extends:`), validate it and stamp its digest."""
    path = Path(path)
    if not path.exists():
        if path == default_policy() and shipped_folder() is None:
            raise ConfigError([f"{path}: file not found: this installation of the gateway lacks its shipped default "
                               f"policy; reinstall the package, or name a policy file in the config (`policy:`)"])
        raise ConfigError([f"{path}: file not found (a config's `policy:` is relative to the config file's folder; "
                           f"leave it out to use the default policy shipped with the gateway)"])
    folders: list[str] = []
    data = _read_with_bases(path, seen=(), folders=folders)
    try:
        policy = Policy.model_validate(data, context={"base_dir": path.parent})
    except Exception as exc:  # pydantic.ValidationError
        if hasattr(exc, "errors"):
            raise ConfigError([f"{path}: {line}" for line in describe_errors(exc)]) from None
        raise
    policy = policy.model_copy(update={"models": {k: _resolve_smoke(v, path.parent) for k, v in policy.models.items()}})
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return policy.model_copy(update={"digest": digest, "folders": tuple(folders)})


def _resolve_smoke(mp: ModelPolicy, base: Path) -> ModelPolicy:
    for name in ("smoke", "verification"):
        test = getattr(mp, name)
        if test is not None:
            mp = mp.model_copy(update={name: test.model_copy(update={"dataset": resolve_path(test.dataset, base)})})
    return mp


def _read_with_bases(path: Path, seen: tuple[Path, ...], folders: list[str]) -> dict[str, Any]:
    resolved = path.resolve()
    folders.append(str(resolved.parent))
    if resolved in seen:
        raise ConfigError([f"{path}: `extends` loops back to itself"])
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError([f"{path}: extends: expected a path to another policy file"])
    parent = _read_with_bases(_base_file(base, path), seen + (resolved,), folders)
    return _merge(parent, data)


def _base_file(base: str, path: Path) -> Path:
    """The file `extends: base` in `path` names: beside `path` (or absolute), else the shipped policy of that name."""
    beside = resolve_path(base, path.parent)
    if beside.is_file():
        return beside
    fallback = shipped(base)
    if fallback is not None:
        return fallback
    tried = f"{beside}" if Path(base).expanduser().is_absolute() else f"{beside}, then the policies shipped with the gateway"
    raise ConfigError([f"{path}: extends: {base}: file not found (tried {tried}); name a policy file relative to "
                       f"this file's folder, an absolute path, or `default.yaml` for the shipped default policy"])


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
