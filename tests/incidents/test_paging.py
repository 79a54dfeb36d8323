"""Paging: targets routed by severity and role; the incident commander paged on critical and high; PagerDuty Events v2."""

from __future__ import annotations

import pytest

from gateway.configfile import ConfigError
from tests.incidents.test_notifications import Receiver
from tests.support import auth, eventually, free_port, gateway_factory, write_config


@pytest.fixture
async def receiver():
    r = Receiver(free_port())
    await r.start()
    yield r
    await r.stop()


async def _open(gw, severity: str) -> str:
    r = await gw.client.post("/admin/incidents", json={"category": "performance", "severity": severity, "model": "demo",
                                                       "summary": f"a {severity} drill"}, headers=auth("operator"))
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _sent(gw):
    store = gw.gateway.store
    unsettled = [m for status in ("pending", "sending") for m in await store.query("outbox", where={"status": status})]
    return None if unsettled else await store.query("outbox", where={"status": "sent"}, limit=100)


async def test_the_commander_is_paged_on_critical_and_high_only(tmp_path, demo, receiver, monkeypatch):
    monkeypatch.setenv("PD_KEY", "pd-secret-key")
    hook = f"http://127.0.0.1:{receiver.port}"
    extra = {"notifications": [
        {"name": "ic", "url": f"{hook}/pd", "format": "pagerduty", "role": "incident_commander", "routing_key": "${PD_KEY}"},
        {"name": "low-only", "url": f"{hook}/low", "format": "json", "severities": ["low"]},
    ]}
    async with gateway_factory(tmp_path, {"demo": {"v1": demo.url}})(extra=extra) as gw:
        medium = await _open(gw, "medium")
        low = await _open(gw, "low")
        critical = await _open(gw, "critical")
        await gw.client.post(f"/admin/incidents/{critical}/ack", json={"note": "on it"}, headers=auth("operator"))
        await gw.client.post(f"/admin/incidents/{critical}/resolve", json={"note": "fixed"}, headers=auth("operator"))
        await eventually(lambda: _sent(gw), timeout=15)
    pages = [m["body"] for m in receiver.received if m["path"] == "/pd"]
    assert {p["dedup_key"] for p in pages} == {critical}  # not the medium, not the low one
    assert [p["event_action"] for p in sorted(pages, key=lambda p: ["trigger", "acknowledge", "resolve"].index(p["event_action"]))] \
        == ["trigger", "acknowledge", "resolve"]
    assert all(p["routing_key"] == "pd-secret-key" and p["payload"]["severity"] == "critical" for p in pages)
    assert pages[0]["payload"]["custom_details"]["paged_role"] == "incident_commander"
    assert {m["body"]["incident"]["id"] for m in receiver.received if m["path"] == "/low"} == {low}
    assert medium not in str(receiver.received)


def test_a_pagerduty_target_needs_its_routing_key(tmp_path):
    from gateway.config import load_config

    config = write_config(tmp_path, {"demo": {"v1": "http://127.0.0.1:9"}},
                          extra={"notifications": [{"name": "pd", "url": "https://events.pagerduty.com/v2/enqueue",
                                                    "format": "pagerduty"}]})
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert "routing_key" in str(refused.value)
