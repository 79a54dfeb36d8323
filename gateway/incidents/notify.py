"""Notifications: one message per incident event per target, from a durable outbox.

A message is written to the outbox (in the state store) before anything is sent, under
an id made of the incident, the event and the target, so it exists once however many
replicas saw the event. A sender claims a message with a lease, posts it, and marks it
sent; a failure is retried with growing pauses, a crash mid-send is picked up when the
lease lapses. Receivers get `Idempotency-Key` to drop the rare second delivery that a
crash between sending and marking can cause.

Targets are routed by event, severity and command role (`WebhookTarget.wants`); a role's
target learns who holds the role. Formats: generic JSON, Slack, PagerDuty Events v2
(`gateway.incidents.pagerduty`), whose routing key is added at send time only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import jinja2

from gateway.config import WebhookTarget
from gateway.incidents.pagerduty import pagerduty_event
from gateway.incidents.records import Incident
from gateway.policy import Notifications
from gateway.store import Collections, StaleWrite, StoreUnavailable

log = logging.getLogger("gateway.notify")

OUTBOX = "outbox"
PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
LEASE = 30.0
CATEGORY_TEXT = {"performance": "Performance degradation", "bias": "Potential discrimination (bias)",
                 "security": "Security incident", "availability": "Availability incident", "other": "Incident"}


class Notifier:
    def __init__(self, store: Collections, targets: Sequence[WebhookTarget], policy: Notifications, *,
                 policy_folders: Sequence[str]) -> None:
        self.store = store
        self.targets = list(targets)
        self.policy = policy
        folders = [str(Path(folder) / "templates") for folder in policy_folders]  # a policy's own, then its bases'
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(folders), autoescape=False,
                                      keep_trailing_newline=True, undefined=jinja2.ChainableUndefined)
        self.template_name = policy.template
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None

    def check_template(self) -> None:
        """At start-up: a missing or broken template is a config error, not a silent gap at incident time."""
        self.env.get_template(self.template_name)

    async def start(self) -> None:
        if self.targets:
            self._client = httpx.AsyncClient(timeout=10.0)
            self._task = asyncio.create_task(self._send_forever(), name="gateway-notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()

    # writing -------------------------------------------------------------------------
    async def enqueue(self, incident: Incident, event: str, *, note: str | None = None, by: str | None = None) -> int:
        """Put one message per target in the outbox for this incident event; returns how many are new."""
        targets = [t for t in self.targets if (not t.events or event in t.events) and t.wants(incident.severity)]
        if not targets:
            return 0
        sequence = incident.count(event)
        text = self.render(incident, {"type": event, "note": note, "by": by})
        added = 0
        for target in targets:
            message_id = f"{incident.id}:{event}:{sequence}:{target.name}"
            if target.format == "slack":
                payload: dict[str, Any] = {"text": text}
            elif target.format == "pagerduty":
                payload = pagerduty_event(incident, event, text, role=target.role)
            else:
                payload = {"event": event, "incident": _public(incident), "text": text}
                if target.role:
                    payload["role"] = {"name": target.role, **incident.roles.get(target.role, {"who": None})}
            doc = {"id": message_id, "status": PENDING, "target": target.name, "incident": incident.id, "event": event,
                   "payload": payload, "attempts": 0, "created_at": time.time(), "next_at": 0.0, "lease_until": 0.0,
                   "last_error": None, "sent_at": None}
            try:
                await self.store.insert(OUTBOX, message_id, doc)
                added += 1
            except StaleWrite:
                pass  # another replica queued this very message
        self._wake.set()
        return added

    def render(self, incident: Incident, event: dict[str, Any]) -> str:
        window_since = incident.since or incident.opened_at
        view = {
            **incident.to_doc(),
            "title": f"{CATEGORY_TEXT.get(incident.category, 'Incident')} in {incident.model or 'the gateway'}",
            "category_text": CATEGORY_TEXT.get(incident.category, incident.category),
            "window_since_text": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(window_since)) if window_since else "-",
            "scope_text": _scope(incident),
            "values_text": sorted((k, _fmt(v)) for k, v in incident.values.items()),
            "actions": [f"{a.action}: {a.result}" + ("" if a.ok else " (FAILED)") for a in incident.actions],
            "status_text": {"open": "Open: containment in place; an operator has not acknowledged it yet.",
                            "acknowledged": f"Acknowledged by {incident.acknowledged_by}; under investigation.",
                            "resolved": f"Resolved by {incident.resolved_by}: {incident.resolution}"}
            .get(incident.status, incident.status),
        }
        return self.env.get_template(self.template_name).render(incident=view, event=event)

    # sending -------------------------------------------------------------------------
    async def _send_forever(self) -> None:
        while True:
            try:
                await self.send_due()
            except StoreUnavailable as exc:
                log.warning("notification outbox unavailable: %s", exc)
            except Exception:
                log.exception("notification sender failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def send_due(self) -> int:
        now = time.time()
        sent = 0
        due = [m for m in await self.store.query(OUTBOX, where={"status": PENDING}, newest_first=False, limit=100)
               if m["next_at"] <= now]
        due += [m for m in await self.store.query(OUTBOX, where={"status": SENDING}, newest_first=False, limit=100)
                if m["lease_until"] < now]  # a sender died mid-send
        for message in due:
            claimed = {**message, "status": SENDING, "lease_until": now + LEASE}
            try:
                await self.store.update(OUTBOX, message["id"], claimed,
                                           expect={"status": message["status"], "lease_until": message["lease_until"]})
            except StaleWrite:
                continue  # another replica took it
            sent += await self._deliver(claimed)
        return sent

    async def _deliver(self, message: dict[str, Any]) -> int:
        target = next((t for t in self.targets if t.name == message["target"]), None)
        now = time.time()
        if target is None:
            return await self._settle(message, FAILED, error=f"target {message['target']!r} is no longer configured")
        try:
            assert self._client is not None
            payload = message["payload"]
            if target.format == "pagerduty":  # the key is a secret: it lives in the config, never in the outbox
                payload = {**payload, "routing_key": target.routing_key}
            response = await self._client.post(str(target.url), json=payload,
                                               headers={**target.headers, "idempotency-key": message["id"]})
            if 200 <= response.status_code < 300:
                return await self._settle(message, SENT)
            error = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        policy = self.policy
        attempts = message["attempts"] + 1
        if now - message["created_at"] > policy.give_up_after:
            log.error("giving up on notification %s after %d attempts: %s", message["id"], attempts, error)
            return await self._settle(message, FAILED, error=error, attempts=attempts)
        pause = min(policy.retry_max_seconds, 2.0 ** min(attempts, 16))
        log.warning("notification %s to %s failed (attempt %d): %s; next try in %.0fs", message["id"], target.name,
                    attempts, error, pause)
        await self._settle(message, PENDING, error=error, attempts=attempts, next_at=now + pause)
        return 0

    async def _settle(self, message: dict[str, Any], status: str, *, error: str | None = None,
                      attempts: int | None = None, next_at: float | None = None) -> int:
        done = {**message, "status": status, "last_error": error, "lease_until": 0.0,
                "attempts": attempts if attempts is not None else message["attempts"] + 1,
                "next_at": next_at if next_at is not None else message["next_at"]}
        if status == SENT:
            done["sent_at"] = time.time()
        try:
            await self.store.update(OUTBOX, message["id"], done, expect={"status": SENDING, "lease_until": message["lease_until"]})
        except StaleWrite:
            log.warning("notification %s changed while it was being sent", message["id"])
        return 1 if status == SENT else 0


def _public(incident: Incident) -> dict[str, Any]:
    doc = incident.to_doc()
    return {k: doc.get(k) for k in ("id", "status", "category", "trigger", "severity", "model", "version", "summary",
                                    "values", "window", "opened_at", "actions", "hold", "roles")}


def _scope(incident: Incident) -> str:
    values = incident.values
    for key in ("requests", "decisions", "feedback", "samples"):
        if key in values:
            return f"~{int(values[key]):,} {key} in the window"
    return "see the evidence export for the affected decisions"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
