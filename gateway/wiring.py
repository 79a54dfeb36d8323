"""The wiring: every part of a running gateway, built once in the order they depend on each other.

Read `Gateway.__init__` from top to bottom to see the house: the ground (the store, its
mirror, the evidence log), oversight (levels, plans, the serving gate), versions,
incidents, the review queue, then the two planes that serve HTTP. Each part receives
exactly the collaborators it uses; nothing below this module imports it, and nothing on
the request path calls back into it. `start` and `stop` bring the parts up and down in
order; the ASGI entry (`gateway.app`) and the CLI are its only users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import jinja2

from gateway.api import control_app
from gateway.api.decisions import DecisionsApi
from gateway.api.evidence import EvidenceApi
from gateway.api.incidents import IncidentsApi
from gateway.api.models import ModelsApi
from gateway.api.ops import OpsApi
from gateway.api.reload import ReloadApi
from gateway.api.oversight import OversightApi
from gateway.api.reports import ReportsApi
from gateway.api.response import IncidentResponseApi
from gateway.api.review import ReviewApi
from gateway.api.tokens import TokensApi
from gateway.api.versions import VersionsApi
from gateway.auth import TokenTable
from gateway.background import Background
from gateway.catalog import Catalog, make_version_route
from gateway.config import Config, load_config
from gateway.configfile import ConfigError
from gateway.console import console_routes
from gateway.console.dashboard import Dashboard
from gateway.console.review import ReviewPages
from gateway.console.session import Sessions
from gateway.console.signin import SignIn
from gateway.console.sso import OidcSignIn
from gateway.console.web import QueueHub
from gateway.control import keys
from gateway.control.seed import seed_first_start
from gateway.control.state import ControlState
from gateway.credentials import Credentials
from gateway.heap import settle_heap
from gateway.incidents.affected import AffectedReport, as_csv
from gateway.incidents.retro import RetroReviews
from gateway.incidents.verification import Verification
from gateway.incidents.watch import PostRollbackWatch
from gateway.incidents.window import WindowDecisions
from gateway.incidents.containment import Containment
from gateway.incidents.manager import IncidentManager
from gateway.incidents.moderation import OutputChecks
from gateway.incidents.monitor import Monitor
from gateway.incidents.notify import Notifier
from gateway.incidents.reports import Reports
from gateway.integrity.gate import IntegrityGate
from gateway.metrics import Metrics
from gateway.oversight.levels import LevelControl
from gateway.oversight.plan import Planner
from gateway.policy import Policy, load_policy
from gateway.proxy.dataplane import DataPlane
from gateway.proxy.hold import Holding
from gateway.proxy.inflight import InFlight
from gateway.proxy.observers import AccessLog, RecentRequests, TrafficMetrics
from gateway.proxy.resolve import Resolver
from gateway.recorder import NullRecorder, Recorder
from gateway.recording.decisions import DecisionRecording, NoRecording
from gateway.evidence import Witness
from gateway.recording.export import Exports
from gateway.recording.fleet import FleetLogs
from gateway.recording.fleet_export import FleetExport
from gateway.recording.witnessing import Witnessing
from gateway.recording.evidence import EvidenceRecorder
from gateway.redaction import header_names
from gateway.reload import ReloadRefused, Reloader, file_digest, restart_needed
from gateway.review.queue import ReviewQueue
from gateway.store import StoreUnavailable, make_store
from gateway import tracing
from gateway.versions.freeze import DeploymentFreeze
from gateway.versions.registry import Registry
from gateway.versions.snapshot import Snapshots
from gateway.versions.switch import Switcher

log = logging.getLogger("gateway")


async def _close_later(routes: list[Any], delay: float) -> None:
    await asyncio.sleep(delay)
    for route in routes:
        route.pool.close()


class Gateway:
    def __init__(self, config: Config, policy: Policy, *, workers: int = 1) -> None:
        self.config = config
        self.policy = policy
        models = list(config.models)
        self.model_policies = {name: policy.for_model(name) for name in models}
        oversight = policy.oversight
        self.background = Background()
        self.started_at = 0.0

        # the ground: the store, its mirror in memory, the evidence log -------------------------
        self.store = make_store(config.store, config.data_dir, liveness=oversight.max_staleness,
                                replicas_to_ack=config.replicas_to_ack, ack_timeout=config.store_durability.timeout,
                                shared=workers > 1)  # `serve --workers N`: N processes on one embedded store
        self.state = ControlState(self.store, initial_level=oversight.initial_level,
                                  max_staleness=oversight.max_staleness, on_state_loss=oversight.on_state_loss)
        self.evidence = (EvidenceRecorder(config.evidence, policy.evidence, data_dir=config.data_dir)
                         if config.evidence.enabled else None)
        self.recorder: Recorder = self.evidence or NullRecorder()
        self.tokens = TokenTable(config.tokens)
        self.state.add_listener(self.tokens.on_state_change)  # issued and revoked tokens, from any replica
        self.metrics = Metrics()
        self.catalog = Catalog(config)
        self.metrics.watch_endpoints(self.catalog.endpoints)

        # oversight: levels, plans, the serving gate ---------------------------------------------
        self.levels = LevelControl(self.state, self.store, oversight, models, self.recorder)
        self.credentials = Credentials(self.state, self.tokens, self.recorder, confirm_timeout=oversight.confirm_timeout)
        self.planner = Planner(self.model_policies, record_from=oversight.record_all_from_level)
        self.state.add_listener(self.planner.on_state_change)  # the sampling key, the same on every replica
        self.integrity = IntegrityGate(self.state, self.recorder, reverify_interval=policy.integrity.reverify_interval,
                                       serve_unsigned=policy.integrity.serve_unsigned)
        self.state.add_listener(self.integrity.on_state_change)  # a verdict from any replica gates here too
        self._register_configured_versions()

        # versions: snapshots, switches, the registry --------------------------------------------
        self.recent = RecentRequests()
        self.snapshots = Snapshots(self.state, traffic=self.metrics.summary, recent=self.recent.of,
                                   config_source=config.source, policy_version=policy.version,
                                   policy_digest=policy.digest)
        self.switcher = Switcher(self.state, self.catalog, self.integrity, self.store, self.recorder, self.snapshots,
                                 confirm_timeout=oversight.confirm_timeout,
                                 smoke={name: p.smoke for name, p in self.model_policies.items()})
        self.registry = Registry(self.state, self.catalog, self.integrity, self.recorder, configured=config.models,
                                 confirm_timeout=oversight.confirm_timeout, spawn=self.background.spawn)
        self.state.add_listener(self.registry.on_state_change)  # a version added on any replica routes here too

        # incidents: notification, containment, detection ----------------------------------------
        self.notifier = Notifier(self.store, config.notifications, policy.notifications, policy_folders=policy.folders)
        containment = Containment(levels=self.levels, rollback=self.switcher, snapshots=self.snapshots,
                                  holds=self.evidence, recorder=self.recorder)
        self.incidents = IncidentManager(self.store, self.recorder, containment, self.notifier, triggers=policy.triggers,
                                         models=models, active=self.state.active)
        self.integrity.report_to(self.incidents)  # a version that fails verification is a security incident
        self.switcher.guard_with(DeploymentFreeze(self.state, self.incidents))  # no deployments while paused
        containment.revoke_with(self.credentials)  # a security incident's orders may revoke a token
        self.monitor = Monitor(self.store, self.incidents, self.recorder, triggers=policy.triggers,
                               policies=self.model_policies, active=self.state.active, evidence=self.evidence)

        # the review queue (reviewers' verdicts are ground truth for the monitor) -------------------
        # traces (OTEL_TRACES_EXPORTER=otlp; else None): a span per request, and per decision linked to it
        self.tracing = tracing.from_environment(**{"service.instance.id": self.state.replica_id})
        on_verdict = self.monitor.verdict if self.tracing is None else _both(self.monitor.verdict, self.tracing.decided)
        self.review = ReviewQueue(self.store, policy.review, self.recorder, on_verdict=on_verdict)
        # output quality: the models' output checks (off the request path unless blocking), users' reports and appeals
        self.output_checks = OutputChecks(self.model_policies, self.monitor.counters)
        self.reports = Reports(self.store, self.recorder, self.review, self.monitor.counters,
                               request_of=self.monitor.request_of, policy_version=policy.version)

        # the data plane: its stages, in request order ---------------------------------------------
        redact = header_names(policy.evidence.redact_headers)
        recording = (DecisionRecording(self.recorder, root_digest=self.integrity.root_digest,
                                       policy_version=policy.version, redact=redact,
                                       redact_pointers={n: p.redact_body or () for n, p in self.model_policies.items()})
                     if self.evidence else NoRecording())
        self.inflight = InFlight(self.state, end_streams_on_pause=oversight.end_streams_on_pause)
        self.state.add_listener(self.inflight.on_state_change)  # a raise on any replica reaches exchanges here
        self.state.add_loss_listener(self.inflight.on_state_lost)  # so does failing closed
        observers: list[Any] = [TrafficMetrics(self.metrics), self.monitor, self.recent]
        if self.output_checks.checks:
            observers.append(self.output_checks)
        if config.logging.access_log:
            observers.append(AccessLog(logging.getLogger("gateway.access")))
        if self.tracing is not None:
            observers.append(self.tracing)
        self.dataplane = DataPlane(
            callers=self.tokens,
            resolver=Resolver(self.catalog, self.state),
            gate=self.integrity,
            planner=self.planner,
            holding=Holding(self.review, recording, self.planner, policy.review,
                            confidence={n: p.confidence for n, p in self.model_policies.items()},
                            waits={n: p.hold_wait for n, p in self.model_policies.items()},
                            buffer_limit=config.limits.max_response_buffer_bytes, redact=redact,
                            policy_version=policy.version, checks=self.output_checks),
            recording=recording,
            observers=observers,
            inflight=self.inflight,
            limits=config.limits,
            tracing=self.tracing,
        )
        # scrape-time oversight metrics (in flight, queue, integrity, incidents, state) and ticket/incident counters
        self.metrics.watch_oversight(state=self.state, inflight=self.inflight, integrity=self.integrity,
                                     review=self.review, incidents=self.incidents, models=models,
                                     review_timeout=policy.review.timeout)

        # the control plane: the API, then the console ----------------------------------------------
        # the fleet's evidence: every replica's log in the evidence directory, witnessed by the others
        self.fleet = FleetLogs(self.evidence) if self.evidence else None
        self.witnessing: Witnessing | None = None

        # incident response beyond containment: verification, the post-rollback watch, retro-reviews, who was affected
        responding = policy.incidents
        self.window = WindowDecisions(self.fleet, self.model_policies)
        self.verification = Verification(self.store, self.incidents, self.switcher, self.state, self.window,
                                         policies=self.model_policies, known=lambda m: list(self.catalog.models[m].versions),
                                         traffic=self.metrics.summary, replica_wait=responding.replica_wait,
                                         spawn=self.background.spawn)
        if responding.verify_on_open:
            self.incidents.on_open(self.verification.on_open)
        self.watch = PostRollbackWatch(self.store, self.incidents, self.levels, self.window,
                                       period=responding.post_rollback_watch, level=responding.watch_level)
        self.switcher.on_switch(self.watch.after_switch)
        self.retro = RetroReviews(self.store, self.review, self.incidents, self.window,
                                  limit=responding.retro_review_limit, policy_version=policy.version)
        containment.review_with(self.retro)
        self.affected = AffectedReport(self.window, self.store, self.incidents,
                                       subject_pointers={n: p.subject_pointer for n, p in self.model_policies.items()})
        evidence_policy = policy.evidence
        catch_up = evidence_policy.checkpoint_interval + 2 * evidence_policy.witness_interval + 1
        exports = (Exports(self.evidence, FleetExport(self.fleet, catch_up=catch_up),
                           self.store, self.incidents, self.integrity, config=config, policy=policy,
                           sampling_key=lambda: self.planner.sampling_key,
                           sample_rates={n: p.sample_rate for n, p in self.model_policies.items()})
                   if self.evidence and self.fleet else None)
        if exports is not None:
            exports.incident_reports = self._incident_reports
        self.exports = exports
        body_cap = config.limits.max_control_body_bytes
        # reload without restart: `POST /admin/reload` and SIGHUP, on every replica (`gateway.reload`)
        self.reloader = Reloader(self.state, self.store, self.recorder, load=self._load_files,
                                 current=lambda: (self.config, self.policy), problems=self._reload_problems,
                                 apply=self._apply_reload,
                                 confirm_timeout=oversight.confirm_timeout, spawn=self.background.spawn)
        self.state.add_listener(self.reloader.on_state_change)
        self.sessions = sessions = Sessions(self.store, self.tokens.live_roles())  # a revoked token's sessions end too
        self.hub = hub = QueueHub(self.review)  # the console's live queue events, for every open stream here
        oidc = config.console.oidc  # console single sign-on (OpenID Connect), beside token sign-in
        self.sso = sso = (OidcSignIn(oidc, sessions, self.store, self.recorder, refused=self.monitor.refused)
               if oidc is not None else None)
        self.control = control_app([
            *OpsApi(self.tokens, self.state, self.catalog, self.metrics, metrics_public=config.metrics.public,
                    started_at=lambda: self.started_at).routes(),
            *(decisions := DecisionsApi(self.tokens, self.review, policy.review)).routes(),
            *OversightApi(self.tokens, self.levels, max_body_bytes=body_cap).routes(),
            *ReviewApi(self.tokens, self.review, max_body_bytes=body_cap).routes(),
            *ModelsApi(self.tokens, self.state, self.catalog, self.integrity).routes(),
            *VersionsApi(self.tokens, self.registry, self.switcher, max_body_bytes=body_cap).routes(),
            *EvidenceApi(self.tokens, self.evidence, self.fleet, exports, catch_up=evidence_policy.checkpoint_interval + 1,
                         max_body_bytes=body_cap).routes(),
            *IncidentsApi(self.tokens, self.incidents, self.monitor, max_body_bytes=body_cap).routes(),
            *IncidentResponseApi(self.tokens, self.incidents, self.verification, self.retro, self.affected,
                                 max_body_bytes=body_cap).routes(),
            *TokensApi(self.tokens, self.credentials, max_body_bytes=body_cap).routes(),
            *ReportsApi(self.tokens, self.reports, max_body_bytes=body_cap).routes(),
            *ReloadApi(self.tokens, self.reloader, max_body_bytes=body_cap).routes(),
            *console_routes(
                SignIn(sessions, hub, self.tokens, self.recorder, refused=self.monitor.refused, max_body_bytes=body_cap,
                       sso_label=oidc.label if oidc is not None else None),
                ReviewPages(sessions, hub, self.review, max_body_bytes=body_cap,
                            review_fields=lambda m: p.review_fields if (p := self.model_policies.get(m)) else None),
                Dashboard(sessions, self.state, self.levels, self.registry, self.switcher, self.incidents, self.review,
                          self.monitor.counters, self.store, max_body_bytes=body_cap, retro=self.retro),
                sso=sso,
            ),
        ])
        self._retention: asyncio.Task[None] | None = None
        self._decisions_api = decisions  # its review timings change on a reload

    @classmethod
    def from_files(cls, config_path: str | Path, *, workers: int = 1) -> "Gateway":
        """Load, validate and build: everything that can refuse a file before the gateway listens (`ConfigError`).

        `gateway serve` and `gateway config check` both start here, so they accept the same files.
        `workers`: how many processes serve with this config (`serve --workers`), this one among them.
        """
        config = load_config(config_path)
        gateway = cls(config, load_policy(config.policy), workers=workers)
        try:
            gateway.notifier.check_template()
        except jinja2.TemplateError as exc:
            gateway.catalog.close()
            raise ConfigError([f"{config.policy}: notifications.template: cannot use it: "
                               f"{exc.__class__.__name__}: {exc}"]) from None
        return gateway

    async def _incident_reports(self, incident_id: str) -> dict[str, bytes]:
        """What an incident's export bundle holds beside its records: who was affected, and the retro-reviews."""
        import json

        report = await self.affected.build(incident_id)
        reviews = await self.retro.of_incident(incident_id)
        return {"affected.json": json.dumps(report, indent=2, default=str).encode() + b"\n",
                "affected.csv": as_csv(report).encode(),
                "retro-reviews.json": json.dumps(reviews, indent=2, default=str).encode() + b"\n"}

    def _load_files(self) -> tuple[Config, Policy, str, str]:
        """This replica's config and policy files, loaded and checked as `from_files` does (blocking: a thread's work)."""
        assert self.config.source is not None, "a gateway built from files reloads from them"
        candidate = Gateway.from_files(self.config.source)
        candidate.catalog.close()
        config, policy = candidate.config, candidate.policy
        return config, policy, file_digest(config.source), policy.digest

    def _reload_problems(self, config: Config, policy: Policy) -> list[str]:
        """What stops this replica from applying `config` and `policy` live (empty: it can)."""
        problems = restart_needed(self.config, self.policy, config, policy, active=self.state.active)
        for model, mc in config.models.items():
            known = self.config.models.get(model)
            route = self.catalog.models.get(model)
            for version in mc.versions:
                if known is not None and version not in known.versions and route is not None and version in route.versions:
                    problems.append(f"config: models.{model}.versions.{version}: a version of that name was added at "
                                    f"run time (the versions API); versions are never replaced: use another name")
        return problems

    def _apply_reload(self, config: Config, policy: Policy) -> None:
        """Swap in what a checked reload changes (`gateway.reload.LIVE_*`), on the event loop with no await.

        Everything that can fail (upstream routes) is built first; then references are swapped.
        """
        old = self.config
        added = {(m, v): (vc, make_version_route(m, v, vc, config.timeouts, config.limits.upstream_connections,
                                                 proxy_from_env=config.egress.proxy_from_env))
                 for m, mc in config.models.items() for v, vc in mc.versions.items()
                 if m in old.models and v not in old.models[m].versions}
        removed = [(m, v) for m, mc in old.models.items() if m in config.models
                   for v in mc.versions if v not in config.models[m].versions]
        if any(self.state.active.get(m) == v for m, v in removed):
            raise ReloadRefused("reload refused: a version it removes became active meanwhile")
        model_policies = {name: policy.for_model(name) for name in config.models}
        tokens = {key[len(keys.TOKENS):]: doc for key, doc in self.state.docs.items() if key.startswith(keys.TOKENS)}
        # swap: from here on nothing raises
        self.tokens.replace_bootstrap(config.tokens, tokens)
        for (model, version), (vc, route) in added.items():
            self.catalog.models[model].versions[version] = route
            self.integrity.register(model, version, vc)
            self.background.spawn(self.integrity.verify(model, version, reason="added by a config reload"))
        gone = [self.catalog.models[m].versions.pop(v) for m, v in removed if v in self.catalog.models[m].versions]
        for model, version in removed:
            for table in (self.integrity.versions, self.integrity.status, self.integrity.last_verified):
                table.pop((model, version), None)
        self.registry.configured = config.models
        self.planner.policies = self.monitor.policies = model_policies
        holding = self.dataplane.holding
        holding.confidence = {n: p.confidence for n, p in model_policies.items()}
        holding.waits = {n: p.hold_wait for n, p in model_policies.items()}
        self.monitor.triggers = self.incidents.triggers = policy.triggers
        self.review.review = holding.review = self._decisions_api.review = policy.review
        for part in (holding, self.dataplane.recording, self.reports, self.retro):
            if hasattr(part, "policy_version"):
                part.policy_version = policy.version
        self.snapshots.policy = {"version": policy.version, "digest": policy.digest}
        if self.exports is not None:
            self.exports.config, self.exports.policy = config, policy
            self.exports.sample_rates = {n: p.sample_rate for n, p in model_policies.items()}
        self.model_policies = model_policies
        self.config, self.policy = config, policy
        if added:
            self.background.spawn(self.registry.seed_from_config())  # the history shows every version that served
        if gone:
            self.background.spawn(_close_later(gone, config.timeouts.read + 5))  # requests in flight finish first

    @property
    def sampling_key(self) -> bytes:
        return self.planner.sampling_key

    def _register_configured_versions(self) -> None:
        for model_name, model in self.config.models.items():
            for version_name, version in model.versions.items():
                self.integrity.register(model_name, version_name, version)

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.notifier.check_template()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if self.evidence is not None:
            await asyncio.to_thread(self.evidence.open)
            self._retention = asyncio.create_task(self.evidence.retain_forever(), name="gateway-evidence-retention")
            await self._start_witnessing()
        await self._check_store_durability()
        await self.state.start()
        key = await seed_first_start(self.state, {name: m.initial_version for name, m in self.config.models.items()})
        if not self.planner.sampling_key:
            self.planner.use_sampling_key(key)
        await self.registry.seed_from_config()
        self._register_configured_versions()  # again, now that stored verdicts are known
        await self.review.start()
        await self.integrity.start()
        await self.monitor.start()
        await self.notifier.start()
        await self.verification.start()
        await self.watch.start()
        self.reloader.start()
        self.started_at = time.time()
        settle_heap()
        log.info("gateway started", extra={"store": "embedded" if self.config.store == "embedded" else "redis",
                                           "replica": self.state.replica_id, "models": sorted(self.catalog.models),
                                           "policy": self.policy.version})

    async def _check_store_durability(self) -> None:
        """A store that would lose acknowledged tickets on a restart: say so, or (policy) refuse to start."""
        problems = await self.store.durability_problems()
        for problem in problems:
            log.warning("state store: %s", problem)
        if problems and self.policy.oversight.on_volatile_store == "refuse":
            raise StoreUnavailable(f"refusing to start (oversight.on_volatile_store: refuse): {problems[0]}")

    async def _start_witnessing(self) -> None:
        """Cosign the other replicas' logs from now on (their slots in the shared evidence directory)."""
        assert self.evidence is not None and self.fleet is not None and self.evidence.directory is not None
        key = await asyncio.to_thread(self.evidence.witness_key)
        witness = await asyncio.to_thread(Witness, key, self.evidence.directory)
        self.witnessing = Witnessing(self.fleet, witness, self.recorder, self.incidents,
                                     interval=self.policy.evidence.witness_interval)
        self.background.spawn(self.witnessing.run_forever())

    async def stop(self) -> None:
        self.reloader.stop()
        self.background.cancel_all()
        await self.watch.stop()
        await self.verification.stop()
        await self.notifier.stop()
        await self.output_checks.stop()
        await self.monitor.stop()
        await self.integrity.stop()
        await self.review.stop()
        await self.state.stop()
        self.catalog.close()
        if self._retention is not None:
            self._retention.cancel()
        if self.fleet is not None:
            await asyncio.to_thread(self.fleet.close)
        if self.evidence is not None:
            await asyncio.to_thread(self.evidence.close)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # exports what is queued, within OTEL_BSP_EXPORT_TIMEOUT


def _both(first, second):
    """One verdict listener that tells two (the monitor, then tracing; a tracing failure is only logged)."""
    def told(ticket, decision) -> None:
        first(ticket, decision)
        try:
            second(ticket, decision)
        except Exception:
            log.exception("could not trace a review decision")
    return told
