"""Observers: what one finished exchange leaves in memory — metrics, the recent ids, the access log line."""

from __future__ import annotations

import logging

from gateway.auth import Caller
from gateway.metrics import Metrics
from gateway.proxy.exchange import Exchange
from gateway.proxy.observers import AccessLog, RecentRequests, TrafficMetrics


def _exchange(rid: bytes = b"r1", **fields) -> Exchange:
    ex = Exchange(rid)
    ex.caller, ex.model, ex.version, ex.level, ex.route, ex.status = Caller("ci", frozenset({"client"})), "credit", "v2", 1, "auto", 200
    for name, value in fields.items():
        setattr(ex, name, value)
    return ex


def test_recent_requests_keep_the_last_ids_of_each_version():
    recent = RecentRequests(keep=3)
    for i in range(5):
        recent.observe(_exchange(b"r%d" % i))
    recent.observe(_exchange(b"other", version="v1"))
    recent.observe(_exchange(b"refused", version=""))  # never reached a version
    assert recent.of("credit", "v2") == ["r2", "r3", "r4"] and recent.of("credit", "v1") == ["other"]


def test_metrics_count_answers_and_each_kind_of_upstream_failure():
    metrics = Metrics()
    observe = TrafficMetrics(metrics).observe
    observe(_exchange())
    observe(_exchange(upstream_error="reset"))
    observe(_exchange(response_status=502))
    observe(_exchange(disconnected=True))
    text = metrics.render().decode()
    assert 'gateway_requests_total{model="credit",route="auto",status="200",version="v2"} 3.0' in text
    assert 'gateway_requests_total{model="credit",route="auto",status="499",version="v2"} 1.0' in text
    assert 'kind="reset"' in text and 'kind="5xx"' in text


def test_the_access_log_names_the_caller_by_token_id(caplog):
    caplog.set_level(logging.INFO, logger="test.access")
    AccessLog(logging.getLogger("test.access")).observe(_exchange(ticket="tk_1"))
    (record,) = caplog.records
    assert (record.request_id, record.caller, record.model, record.status, record.ticket) == ("r1", "ci", "credit", 200, "tk_1")
