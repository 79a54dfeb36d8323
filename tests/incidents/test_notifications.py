"""Notifications: the seed's stakeholder message, once per incident event, through an outage and a restart."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support import auth, eventually, free_port, gateway_factory


class Receiver:
    """A webhook receiver on a real socket, started when the test says so."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append({"path": lines[0].split()[1], "headers": headers, "body": json.loads(body)})
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def _settled(gw):
    """The sent messages, once the outbox holds nothing that could still be sent."""
    store = gw.gateway.store
    unsettled = [m for status in ("pending", "sending") for m in await store.query("outbox", where={"status": status})]
    return None if unsettled else await store.query("outbox", where={"status": "sent"}, limit=50)


@pytest.fixture
async def receiver():
    r = Receiver(free_port())
    yield r
    await r.stop()


async def test_one_message_per_event_and_target_across_an_outage_and_a_restart(tmp_path, demo, receiver):
    make = gateway_factory(tmp_path, {"credit": {"v3": demo.url}})
    extra = {"notifications": [
        {"name": "ops", "url": f"http://127.0.0.1:{receiver.port}/hook", "format": "json"},
        {"name": "chat", "url": f"http://127.0.0.1:{receiver.port}/slack", "format": "slack", "events": ["detected", "resolved"]},
    ]}
    directory = tmp_path / "gateway"
    async with make(extra=extra, directory=directory) as gw:  # the receiver is down all along
        r = await gw.client.post("/admin/incidents", json={"category": "bias", "severity": "high", "model": "credit",
                                                           "summary": "approval rates diverged between groups"},
                                 headers=auth("operator"))
        incident = r.json()["id"]
        await eventually(lambda: _attempted(gw), timeout=5)
    await receiver.start()
    async with make(extra=extra, directory=directory) as gw:  # restarted: the outbox survived
        await eventually(lambda: _value(len(receiver.received) >= 2), timeout=15)
        await gw.client.post(f"/admin/incidents/{incident}/ack", json={"note": "looking"}, headers=auth("operator"))
        await gw.client.post(f"/admin/incidents/{incident}/resolve", json={"note": "reverted the feature"},
                             headers=auth("operator"))
        await eventually(lambda: _value(len(receiver.received) >= 5), timeout=15)
        outbox = await eventually(lambda: _settled(gw), timeout=15)  # nothing pending or in flight: no more sends
    by_path = [(m["path"], m["headers"]["idempotency-key"]) for m in receiver.received]
    assert len(by_path) == len(set(by_path)) == 5  # detected x2, acknowledged x1 (ops only), resolved x2
    events = sorted((m["path"], m["headers"]["idempotency-key"].split(":")[1]) for m in receiver.received)
    assert events == [("/hook", "acknowledged"), ("/hook", "detected"), ("/hook", "resolved"),
                      ("/slack", "detected"), ("/slack", "resolved")]
    assert len(outbox) == 5
    first = next(m for m in receiver.received if m["path"] == "/hook" and m["body"]["event"] == "detected")
    text = first["body"]["text"]
    for part in ("Subject: Incident Report", "INCIDENT SUMMARY:", "- Type: Potential discrimination (bias)",
                 "- System Affected: credit v3", "- Severity: HIGH", "WHAT HAPPENED:", "approval rates diverged between groups",
                 "ACTIONS TAKEN:", "legal hold", "NEXT STEPS:", "CURRENT STATUS:", f"gateway evidence export --incident {incident}"):
        assert part in text, part
    assert first["body"]["incident"]["id"] == incident
    slack = next(m for m in receiver.received if m["path"] == "/slack")
    assert set(slack["body"]) == {"text"} and "INCIDENT SUMMARY" in slack["body"]["text"]


async def _attempted(gw):
    messages = await gw.gateway.store.query("outbox", where={"status": "pending"}, limit=10)
    return messages if messages and all(m["attempts"] >= 1 and m["last_error"] for m in messages) else None


async def _value(value):
    return value
