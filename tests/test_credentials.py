"""Credentials at run time: issued, listed, expired and revoked on every replica at once; only hashes kept.

Two in-process gateways share one real Redis; the token table each replica mirrors is what
refuses a revoked token, so the refusal is there when the revocation answers, on both.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.cli import main
from tests.support import TOKENS, auth, console_session, gateway_factory

PREDICT = {"applicant": {"id": "t-1", "group": "A"}}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _actions(gw, kind: str) -> list[dict]:
    log = gw.gateway.evidence.log
    return [r for r in (log.get(i) for i in range(log.size)) if r.get("kind") == "action" and r.get("action") == kind]


def _bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


async def test_an_issued_token_works_everywhere_and_a_revoked_one_nowhere_when_the_call_answers(make, redis_url, tmp_path):
    async with make(store=redis_url) as one, make(store=redis_url) as two:
        r = await one.client.post("/admin/tokens", json={"id": "partner-7", "roles": ["client"], "reason": "new partner"},
                                  headers=auth("operator"))
        assert r.status_code == 201, r.text
        issued = r.json()
        token = issued["token"]
        assert token.startswith("gw_") and (issued["applied_by"], issued["replicas"]) == (2, 2)
        assert r.headers["cache-control"] == "no-store"
        for gw in (one, two):
            answer = await gw.client.post("/models/demo/predict", json=PREDICT, headers=_bearer(token))
            assert answer.status_code == 200, answer.text
        listed = (await two.client.get("/admin/tokens", headers=auth("auditor"))).json()["tokens"]
        mine = next(t for t in listed if t["id"] == "partner-7")
        assert (mine["status"], mine["source"], mine["roles"], mine["issued_by"]) == ("active", "issued", ["client"], "test-operator")
        assert "sha256" not in mine and "token" not in mine
        assert {t["id"]: t["source"] for t in listed}["test-client"] == "config"

        r = await two.client.post("/admin/tokens/partner-7/revoke", json={"reason": "key leaked in a paste"},
                                  headers=auth("operator"))
        assert r.status_code == 200 and (r.json()["applied_by"], r.json()["replicas"]) == (2, 2), r.text
        for gw in (one, two):  # no waiting: the call answered once both replicas applied it
            refused = await gw.client.post("/models/demo/predict", json=PREDICT, headers=_bearer(token))
            assert refused.status_code == 401 and "revoked" in refused.text
            assert token not in refused.text
        again = await one.client.post("/admin/tokens", json={"id": "partner-7", "roles": ["client"], "reason": "again"},
                                      headers=auth("operator"))
        assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"  # ids are never reused

        [record] = _actions(two, "token_revoked")
        assert (record["actor"], record["reason"], record["token_id"]) == ("test-operator", "key leaked in a paste", "partner-7")
        assert _actions(one, "token_issued")[0]["token_id"] == "partner-7"
    secret = token.encode()
    assert secret not in _bytes_under(tmp_path)  # evidence, embedded files, logs: the token itself is nowhere


async def test_a_bootstrap_token_can_be_revoked_and_its_console_sessions_end(make):
    async with make() as gw:
        session = await console_session(gw.client, "operator2")
        assert (await gw.client.get("/console", headers={**session, "accept": "text/html"})).status_code == 200
        r = await gw.client.post("/admin/tokens/test-operator2/revoke", json={"reason": "left the team"},
                                 headers=auth("operator"))
        assert r.status_code == 200, r.text
        assert (await gw.client.get("/admin/oversight", headers=auth("operator2"))).status_code == 401
        page = await gw.client.get("/console", headers={**session, "accept": "text/html"}, follow_redirects=False)
        assert page.status_code in (302, 303, 401)
        listed = {t["id"]: t for t in (await gw.client.get("/admin/tokens", headers=auth("operator"))).json()["tokens"]}
        assert (listed["test-operator2"]["status"], listed["test-operator2"]["revoked_by"]) == ("revoked", "test-operator")
        again = await gw.client.post("/admin/tokens/test-operator2/revoke", json={"reason": "twice"}, headers=auth("operator"))
        assert again.json()["already"] is True


async def test_expiry_now_or_by_ttl(make):
    async with make() as gw:
        r = await gw.client.post("/admin/tokens", json={"id": "short", "roles": ["client"], "ttl": 1, "reason": "drill"},
                                 headers=auth("operator"))
        short = r.json()["token"]
        assert (await gw.client.post("/models/demo/predict", json=PREDICT, headers=_bearer(short))).status_code == 200
        await asyncio.sleep(1.1)
        refused = await gw.client.post("/models/demo/predict", json=PREDICT, headers=_bearer(short))
        assert refused.status_code == 401 and "expired" in refused.text
        r = await gw.client.post("/admin/tokens/test-client2/expire", json={"reason": "rotate"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["expires_at"] <= time.time()
        assert (await gw.client.post("/models/demo/predict", json=PREDICT, headers=auth("client2"))).status_code == 401
        assert (await gw.client.post("/models/demo/predict", json=PREDICT, headers=auth("client"))).status_code == 200
        assert _actions(gw, "token_expired")[0]["token_id"] == "test-client2"


@pytest.mark.parametrize("body, status, words", [
    ({"id": "x", "roles": ["admin"], "reason": "r"}, 400, "roles"),
    ({"id": "x", "roles": [], "reason": "r"}, 400, "roles"),
    ({"id": "bad id", "roles": ["client"], "reason": "r"}, 400, "id"),
    ({"id": "x", "roles": ["client"], "reason": "r", "ttl": -5}, 400, "ttl"),
    ({"id": "test-client", "roles": ["client"], "reason": "r"}, 409, "never reused"),
    ({"id": "x", "roles": ["client"]}, 400, "reason"),
])
async def test_bad_requests_are_refused_with_the_error_shape(make, body, status, words):
    async with make() as gw:
        r = await gw.client.post("/admin/tokens", json=body, headers=auth("operator"))
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) >= {"type", "message", "request_id"} and words in error["message"]


async def test_only_operators_change_tokens_and_unknown_ids_are_404(make):
    async with make() as gw:
        body = {"id": "x", "roles": ["client"], "reason": "r"}
        assert (await gw.client.post("/admin/tokens", json=body, headers=auth("auditor"))).status_code == 403
        assert (await gw.client.post("/admin/tokens", json=body, headers=auth("client"))).status_code == 403
        r = await gw.client.post("/admin/tokens/nobody/revoke", json={"reason": "r"}, headers=auth("operator"))
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


async def test_the_cli_issues_lists_and_revokes(make, monkeypatch, capsys):
    async with make() as gw:
        monkeypatch.setenv("GATEWAY_URL", gw.url)
        monkeypatch.setenv("GATEWAY_TOKEN", TOKENS["operator"])

        async def run(*argv: str) -> tuple[int, str, str]:
            code = await asyncio.to_thread(main, list(argv))
            out, err = capsys.readouterr()
            assert "Traceback" not in out + err
            return code, out, err

        code, out, _ = await run("token", "issue", "--id", "batch-job", "--role", "client", "--ttl", "2h", "--reason", "nightly")
        assert code == 0 and out.startswith("token: gw_") and "applied by 1/1 replicas" in out
        token = out.split()[1]
        assert (await gw.client.post("/models/demo/predict", json=PREDICT, headers=_bearer(token))).status_code == 200
        code, out, _ = await run("token", "list")
        assert code == 0 and any(line.startswith("batch-job") and "issued" in line for line in out.splitlines())
        code, out, _ = await run("token", "revoke", "batch-job", "--reason", "done")
        assert code == 0 and out == "batch-job: revoked (epoch " + out.split("(epoch ", 1)[1]
        code, out, err = await run("token", "revoke", "nobody", "--reason", "x")
        assert code == 1 and out == "" and err.count("\n") == 1 and "404 not_found" in err
        code, _, err = await run("token", "issue", "--id", "y", "--role", "client", "--ttl", "soon", "--reason", "x")
        assert code == 2 and "--ttl" in err and err.count("\n") == 1


async def test_a_security_incident_revokes_the_token_it_names_first(make):
    async with make() as gw:
        r = await gw.client.post("/admin/incidents", json={"category": "security", "severity": "high", "model": "demo",
                                                           "summary": "client token seen in a public repository",
                                                           "revoke_token": "test-client2", "raise_to": 1},
                                 headers=auth("operator"))
        assert r.status_code == 201, r.text
        incident = r.json()
        assert incident["actions"][0]["action"] == "revoke credentials" and incident["actions"][0]["ok"]
        assert (await gw.client.post("/models/demo/predict", json=PREDICT, headers=auth("client2"))).status_code == 401
        [record] = _actions(gw, "token_revoked")
        assert record["actor"] == f"incident:{incident['id']}" and "public repository" in record["reason"]
