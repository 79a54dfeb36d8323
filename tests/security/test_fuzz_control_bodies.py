"""Fuzz: every JSON body on every control-plane route, with bodies built to break parsers and handlers.

The routes are read from the running app (every POST and PUT route outside the console),
so a route added later is fuzzed too. Each route starts from a body it accepts; then each
field of it (nested ones too) is replaced by a poison: NaN and Infinity as raw JSON text,
deep nesting, numbers too large to store, lone surrogates, wrong types (`true` for a
level, `"3"`, `3.0`, a list for an object). First every field with every poison, then
Hypothesis (derandomized, a fixed number of examples per route: CI sees the same inputs
every time) with generated values, extra and missing fields, non-objects, invalid UTF-8.

For each request: never a 5xx; every 4xx is the JSON error shape with a request id; a
4xx changes nothing the gateway keeps (control documents and epoch, audit trail, the
stored collections, the evidence log). One refusal records by design: a switch refused by
a failed pre-switch check still ran that check, and a verification is evidence (README,
"Evidence"); it may append its `verification` records and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from tests.support import auth, free_port, gateway_factory, kept_state

EXAMPLES_PER_ROUTE = 40

# A body each route accepts, to poison field by field. Every route the app serves needs one here.
ACCEPTED: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/feedback"): {"request_id": "rq_1", "correct": True},
    ("POST", "/v1/reports"): {"request_id": "rq_1", "category": "other", "text": "t", "appeal": False},
    ("POST", "/review/tickets/{id}/decision"): {"action": "override", "response": {"score": 0.5}, "note": "n", "status": 200},
    ("POST", "/review/tickets/{id}/claim"): {},
    ("POST", "/review/tickets/{id}/release"): {},
    ("PUT", "/admin/oversight/global"): {"level": 1, "reason": "r"},
    ("PUT", "/admin/oversight/models/{name:path}"): {"level": 2, "reason": "r"},
    ("POST", "/admin/kill"): {"reason": "r", "model": "demo"},
    ("POST", "/admin/oversight/changes/{id}/approve"): {"reason": "r"},
    ("POST", "/admin/models/{model:path}/versions"): {"version": "v9", "reason": "r",
                                                 "spec": {"upstream": "http://127.0.0.1:9", "headers": {"x-k": "${HOME}"}}},
    ("POST", "/admin/models/{model:path}/activate"): {"version": "v2", "reason": "r"},  # v2's upstream is down: its checks fail
    ("POST", "/admin/models/{model:path}/rollback"): {"to": "v2", "reason": "r"},
    ("POST", "/admin/models/{model:path}/versions/{version}/verify"): {},
    ("POST", "/admin/incidents"): {"category": "other", "severity": "low", "summary": "s", "model": "demo", "raise_to": 1},
    ("POST", "/admin/incidents/{id}/ack"): {"note": "n"},
    ("POST", "/admin/incidents/{id}/notes"): {"note": "n"},
    ("POST", "/admin/incidents/{id}/resolve"): {"note": "n"},
    ("POST", "/admin/evidence/holds"): {"since": 1, "until": 2.5, "reason": "r"},
    ("POST", "/admin/evidence/holds/{hold_id}/release"): {"reason": "r"},
    ("POST", "/admin/incidents/{id}/verify"): {},
    ("POST", "/admin/incidents/{id}/roles"): {"role": "incident_commander", "who": "alice"},
    ("POST", "/admin/incidents/{id}/retro-reviews"): {"reason": "r", "group": "A", "outcome": "deny"},
    ("POST", "/admin/tokens"): {"id": "fz-new", "roles": ["client"], "ttl": 60, "reason": "r"},
    ("POST", "/admin/tokens/{id}/revoke"): {"reason": "r"},
    ("POST", "/admin/tokens/{id}/expire"): {"reason": "r", "at": 4102444800},
    ("POST", "/admin/reload"): {"reason": "r"},
}

POISONS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "18446744073709551616", "-9223372036854775809", "1" * 5000,
           '"\\ud800"', '"a\\udfff"', "[" * 70 + "]" * 70, '{"a":' * 300 + "1" + "}" * 300, "[" * 50_000 + "]" * 50_000,
           "true", "false", "null", '"3"', '" 2 "', "3.0", "[]", "{}", "[1]", '["x", "${HOME}"]', '""', '"x\\r\\ny"',
           '"\\u0000"', "-1", "2", json.dumps("x" * 5000), '"${OTHER_MODEL_KEY}"']
RAW = [b"", b" ", b"null", b"[]", b"1", b'"text"', b"{", b'{"level":', b"\xff\xfe\x00", b"{}", b"true", b"NaN",
       '{"level": 1, "reason": "utf-16"}'.encode("utf-16"), b'{"reason": "x", "reason": 1}']

text = st.sampled_from(["demo", "v1", "v2", "approve", "reject", "agree", "security", "critical", ""]) | st.text(max_size=10)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                      max_leaves=8)
_HOLE = "\x00hole\x00"


def _paths(body: Any, prefix: tuple = ()) -> list[tuple]:
    """Every field of `body`, nested ones too."""
    out = []
    if isinstance(body, dict):
        for key, value in body.items():
            out.append(prefix + (key,))
            out += _paths(value, prefix + (key,))
    return out


def _replace(body: dict[str, Any], path: tuple, raw: str) -> bytes:
    """`body` with the field at `path` replaced by the raw JSON text `raw`."""
    doc = json.loads(json.dumps(body))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _HOLE
    return json.dumps(doc).replace(json.dumps(_HOLE), raw).encode()


def _bodies(accepted: dict[str, Any]) -> st.SearchStrategy[bytes]:
    paths = _paths(accepted) or [("reason",)]
    replacement = st.sampled_from(POISONS) | values.map(json.dumps)
    return st.one_of(
        st.builds(lambda p, r: _replace(accepted, p, r), st.sampled_from(paths), replacement),
        st.builds(lambda extra: json.dumps({**accepted, **extra}).encode(), st.dictionaries(text, values, max_size=2)),
        st.builds(lambda keep: json.dumps({k: v for k, v in accepted.items() if k in keep}).encode(),
                  st.sets(st.sampled_from(sorted(accepted) or ["x"]))),
        values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(RAW),
        st.binary(max_size=24),
    )


@pytest.fixture
def make_gateway(tmp_path, demo):
    """The demo model, with a second version nothing listens for (a switch to it fails its upstream check)."""
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url, "v2": f"http://127.0.0.1:{free_port()}"}})


def _control_routes(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if isinstance(route, Route) and not route.path.startswith("/console"):
            found += [(method, route.path) for method in sorted((route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"})]
    return found


def _who(path: str) -> str:
    if path.startswith("/v1/"):
        return "client"
    return "reviewer" if path.startswith("/review/") else "operator"


async def _ids(gw) -> dict[str, str]:
    """Real ids for the path parameters: a pending ticket, a pending level change, an open incident, a hold."""
    c = gw.client
    await c.put("/admin/oversight/models/demo", json={"level": 3, "reason": "fuzz"}, headers=auth("operator"))
    held = await c.post("/models/demo/predict", json={"applicant": {"id": "fz"}},
                        headers={**auth("client"), "prefer": "respond-async"})
    lowering = await c.put("/admin/oversight/models/demo", json={"level": 0, "reason": "fuzz"}, headers=auth("operator"))
    incident = await c.post("/admin/incidents", json={"category": "other", "severity": "low", "summary": "fuzz"},
                            headers=auth("operator"))
    hold = await c.post("/admin/evidence/holds", json={"reason": "fuzz"}, headers=auth("operator"))
    token = await c.post("/admin/tokens", json={"id": "fz-victim", "roles": ["client"], "reason": "fuzz"},
                         headers=auth("operator"))
    assert held.status_code == 202 and lowering.status_code == 202 and incident.status_code == 201 and hold.status_code == 201
    assert token.status_code == 201
    return {"ticket": held.json()["ticket"], "change": lowering.json()["change"]["id"], "incident": incident.json()["id"],
            "hold_id": hold.json()["hold"], "token": "fz-victim"}


def _fill(path: str, ids: dict[str, str]) -> str:
    kind = ("ticket" if path.startswith("/review/") else "change" if "/changes/" in path
            else "token" if path.startswith("/admin/tokens/") else "incident")
    values = {"model": "demo", "name": "demo", "version": "v1", "hold_id": ids["hold_id"], "id": ids[kind]}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)


def _only_its_verification(error: dict[str, Any], before: dict[str, Any], after: dict[str, Any], log) -> bool:
    """A switch refused by a failed check: the check's verification records, and nothing else, were appended."""
    if error["type"] != "check_failed":
        return False
    if {k: v for k, v in after.items() if k != "evidence_records"} != {k: v for k, v in before.items() if k != "evidence_records"}:
        return False
    added = range(before["evidence_records"], after["evidence_records"])
    return all(log.get(i).get("action") == "verification" for i in added)


def _checker(client: httpx.Client, state: Callable[[], dict], log, method: str, path: str, url: str) -> Callable[[bytes], None]:
    def check(body: bytes) -> None:
        before = state()
        r = client.request(method, url, content=body, headers={**auth(_who(path)), "content-type": "application/json"})
        shown = (method, url, body[:200], r.status_code, r.text[:500])
        assert r.status_code < 500, shown
        if r.status_code >= 400:
            error = r.json()["error"]
            assert error["request_id"] and error["type"] and error["message"], shown
            after = state()
            assert after == before or _only_its_verification(error, before, after, log), shown
    return check


async def test_no_control_body_gets_a_500_and_no_refusal_changes_anything(make_gateway, monkeypatch):
    monkeypatch.setenv("OTHER_MODEL_KEY", "sk-other")
    # An incident's verification runs in the background after an accepted request and writes to its timeline
    # meanwhile: off here, so what changes during a refusal is what the refusal changed.
    async with make_gateway(policy={"incidents": {"verify_on_open": False}}) as gw:
        routes = _control_routes(gw.gateway.control)
        assert set(routes) == set(ACCEPTED), {"not fuzzed": set(routes) - set(ACCEPTED), "gone": set(ACCEPTED) - set(routes)}
        ids = await _ids(gw)
        loop = asyncio.get_running_loop()

        def state() -> dict[str, Any]:
            return asyncio.run_coroutine_threadsafe(kept_state(gw.gateway), loop).result(30)

        def run_all() -> None:
            with httpx.Client(base_url=gw.url, timeout=30) as client:
                for method, path in routes:
                    accepted = ACCEPTED[(method, path)]
                    check = _checker(client, state, gw.gateway.evidence.log, method, path, _fill(path, ids))
                    for field in _paths(accepted):  # every field with every poison
                        for poison in POISONS:
                            check(_replace(accepted, field, poison))
                    for raw in RAW:
                        check(raw)
                    settings(max_examples=EXAMPLES_PER_ROUTE, derandomize=True, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))(given(_bodies(accepted))(check))()

        await asyncio.to_thread(run_all)
