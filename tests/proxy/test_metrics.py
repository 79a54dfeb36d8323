"""/metrics under real traffic: overhead is the gateway's own time, durations include the waits,
the oversight's figures move with its tickets, and promtool accepts what is exported, the
alert rules and the dashboard's queries (docs/prometheus, docs/grafana)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import auth, eventually

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHAT = "/v1/chat/completions"


def promtool() -> str:
    """promtool (Debian's `prometheus` package): missing is a failure, never a skip."""
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    assert found, "promtool is missing: apt-get install -y prometheus (scripts/test.sh installs it)"
    return found


async def scrape(gw) -> str:
    r = await gw.client.get("/metrics", headers=auth("operator"))
    assert r.status_code == 200
    return r.text


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def families(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


async def _level(gw, level: int) -> None:
    r = await gw.client.put("/admin/oversight/models/demo", json={"level": level, "reason": "metrics test"},
                            headers=auth("operator"))
    assert r.status_code == 200, r.text


async def test_overhead_is_the_gateways_own_time_under_streaming_and_held_traffic(make_gateway, demo):
    demo.configure(stream_delay_ms=30)
    async with make_gateway(policy={"defaults": {"sample_rate": {0: 0.0}}}) as gw:
        # a slow stream: ~20 events 30 ms apart, with usage in its last chunk
        body = {"model": "demo", "stream": True, "max_tokens": 300, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(200))}]}
        async with gw.client.stream("POST", CHAT, json=body, headers=auth("client")) as r:
            assert r.status_code == 200
            header_ms = float(r.headers["x-gateway-overhead-ms"])
            events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        assert len(events) > 10
        text = await scrape(gw)
        labels = {"model": "demo", "version": "v1", "route": "auto"}
        to_end = value(text, "gateway_request_completion_seconds_sum", **labels)
        to_headers = value(text, "gateway_request_duration_seconds_sum", **labels)
        overhead = value(text, "gateway_overhead_seconds_sum", route="auto")
        assert to_end > 0.3 and to_headers < to_end  # the stream's time is in the duration to its end only
        assert overhead < 0.05 and value(text, "gateway_overhead_seconds_bucket", route="auto", le="0.025") == 1
        assert abs(overhead * 1000 - header_ms) < 1.0  # the metric is what X-Gateway-Overhead-Ms said
        llm = {"gen_ai_request_model": "demo", "version": "v1"}
        assert value(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **llm) == 1
        assert value(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **llm) >= 10
        assert value(text, "gen_ai_server_time_to_first_token_count", **llm) == 1

        # a held answer: the client waits ~0.6 s for a human; the gateway's own part stays small
        await _level(gw, 3)

        async def decide_soon():
            ticket = await eventually(lambda: _pending(gw))
            await asyncio.sleep(0.6)
            r = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve", "note": "ok"},
                                     headers=auth("reviewer"))
            assert r.status_code == 200, r.text

        decider = asyncio.create_task(decide_soon())
        r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": "m-1", "group": "A"}},
                                 headers={**auth("client"), "prefer": "wait=20"})
        await decider
        assert r.status_code == 200 and float(r.headers["x-gateway-overhead-ms"]) < 100
        text = await scrape(gw)
        held = {"model": "demo", "version": "v1", "route": "held"}
        assert value(text, "gateway_request_duration_seconds_sum", **held) > 0.6  # the human's wait is in it
        assert value(text, "gateway_overhead_seconds_sum", route="held") < 0.1  # ...and not in the overhead
        assert value(text, "gateway_review_decision_seconds_count", model="demo", kind="hold") == 1
        assert value(text, "gateway_review_decisions_total", model="demo", kind="hold", action="approve") == 1


async def _pending(gw) -> str | None:
    r = await gw.client.get("/review/tickets", headers=auth("reviewer"))
    tickets = r.json()["tickets"] if r.status_code == 200 else []
    return tickets[0]["id"] if tickets else None


async def test_the_queue_metrics_move_as_tickets_are_added_decided_and_expire(make_gateway):
    async with make_gateway(policy={"review": {"timeout": "1500ms"}}) as gw:
        await _level(gw, 3)
        text = await scrape(gw)
        assert value(text, "gateway_review_queue_depth", model="demo", kind="hold") == 0
        assert value(text, "gateway_review_timeout_seconds") == 1.5
        assert value(text, "gateway_requests_in_flight", model="demo") == 0
        assert value(text, "gateway_integrity_status", model="demo", version="v1", status="unsigned") == 1
        assert value(text, "gateway_control_state_stale") == 0
        assert value(text, "gateway_build_info") == 1 and value(text, "process_cpu_seconds_total") > 0
        held = []
        for i in range(2):
            r = await gw.client.post("/models/demo/predict", json={"applicant": {"id": f"q-{i}"}},
                                     headers={**auth("client"), "prefer": "respond-async"})
            assert r.status_code == 202
            held.append(r.json()["ticket"])
        await asyncio.sleep(1.1)  # past the scrape cache, and the tickets have an age
        text = await scrape(gw)
        assert value(text, "gateway_review_queue_depth", model="demo", kind="hold") == 2
        assert 1.0 < value(text, "gateway_review_oldest_pending_age_seconds", model="demo", kind="hold") < 1.5
        assert 0 <= value(text, "gateway_review_next_expiry_seconds", model="demo") < 0.5
        r = await gw.client.post(f"/review/tickets/{held[0]}/decision", json={"action": "reject", "note": "no"},
                                 headers=auth("reviewer"))
        assert r.status_code == 200
        text = await scrape(gw)  # a counter moves at once; the depth within the scrape cache (1 s)
        assert value(text, "gateway_review_decisions_total", model="demo", kind="hold", action="reject") == 1

        async def expired():
            text = await scrape(gw)
            done = value(text, "gateway_review_expired_total", model="demo", kind="hold") == 1
            return text if done and value(text, "gateway_review_queue_depth", model="demo", kind="hold") == 0 else None

        text = await eventually(expired, timeout=10)
        assert value(text, "gateway_review_decision_seconds_count", model="demo", kind="hold") == 1


async def test_promtool_accepts_the_metrics_the_alerts_and_the_dashboard(make_gateway, tmp_path):
    tool = promtool()
    async with make_gateway() as gw:
        await gw.client.post("/models/demo/predict", json={"applicant": {"id": "p"}}, headers=auth("client"))
        await gw.client.post(CHAT, json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
                             headers=auth("client"))
        text = await scrape(gw)
    lint = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rules = DOCS / "prometheus" / "alerts.yaml"
    checked = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    exported = families(text)
    queries = [rule["expr"] for group in yaml.safe_load(rules.read_text())["groups"] for rule in group["rules"]]
    dashboards = sorted((DOCS / "grafana").glob("*.json"))
    assert dashboards, "no dashboard in docs/grafana"
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            queries += [target["expr"] for target in panel.get("targets", [])]
    alerts = {rule.get("alert") for group in yaml.safe_load(rules.read_text())["groups"] for rule in group["rules"]}
    assert {"GatewayReviewQueueBackingUp", "GatewayTicketNearExpiry", "GatewayReplicaStateUnconfirmed",
            "GatewayIntegrityFailure", "GatewayIncidentOpened"} <= alerts
    used = set()
    for query in queries:
        bare = re.sub(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)", "", query)  # label matchers and groupings
        names = set(re.findall(r"\b((?:gateway|gen_ai|process|python)_[a-z0-9_]+)\b", bare))
        assert names, f"no gateway metric in {query!r}"
        used |= names
    missing = sorted(used - exported)
    assert not missing, f"queries use metrics the gateway does not export: {missing}"
