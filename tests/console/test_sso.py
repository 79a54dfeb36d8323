"""Console single sign-on through a real OpenID Provider (`oidc-provider` under Node) in headless Chromium."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import expect

from gateway.config import OidcConfig
from gateway.review.tickets import public_view
from tests.console.conftest import APPLICANT
from tests.support import ROOT, auth, dies_with_tests, free_port, wait_port

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")  # the browser fixture lives in the module's loop

PROVIDER = ROOT / "tests" / "console" / "oidc" / "provider.mjs"
SECRET_ENV = "GW_TEST_OIDC_SECRET"


@asynccontextmanager
async def openid_provider(port: int, redirect_uri: str, secret: str):
    """`oidc-provider` on 127.0.0.1:`port`, its one client registered with `redirect_uri`; stopped afterwards."""
    if not (PROVIDER.parent / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("oidc-provider is not installed: npm ci --prefix tests/console/oidc (scripts/test.sh does it)")
    proc = subprocess.Popen(["node", str(PROVIDER), str(port), redirect_uri], env={**os.environ, "OIDC_CLIENT_SECRET": secret},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=dies_with_tests())
    try:
        await asyncio.to_thread(wait_port, port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sso_config(port: int) -> dict:
    return {"oidc": {"issuer": f"http://127.0.0.1:{port}", "client_id": "gateway-console",
                     "client_secret": "${" + SECRET_ENV + "}", "scopes": ["openid", "profile", "groups"],
                     "roles_claim": "groups", "roles": {"reviewers": "reviewer", "ops": "operator", "audit": "auditor"}}}


async def _sso_sign_in(page, user: str) -> None:
    await page.goto("/console/login")
    await page.get_by_role("link", name="Sign in with SSO").click()
    await page.locator('input[name="login"]').fill(user)  # the provider's own login page
    await page.locator('input[name="password"]').fill("any password")
    await page.locator('button[type="submit"]').click()
    await page.get_by_role("button", name=re.compile("continue", re.I)).click()  # its consent page


@MODULE_LOOP
async def test_a_reviewer_signs_in_through_the_provider_and_decides_a_ticket_and_an_outsider_is_refused(
        make_gateway, browser, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    secret = secrets.token_urlsafe(24)
    monkeypatch.setenv(SECRET_ENV, secret)
    port = free_port()
    async with make_gateway(extra={"console": _sso_config(port)}) as gw:
        recorded = []
        original = gw.gateway.sso.recorder.action

        async def spy(kind, **kw):
            recorded.append((kind, kw))
            return await original(kind, **kw)
        monkeypatch.setattr(gw.gateway.sso.recorder, "action", spy)

        async with openid_provider(port, f"{gw.url}/console/sso/callback", secret):
            r = await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "sso test"},
                                    headers=auth("operator"))
            assert r.status_code in (200, 202), r.text
            r = await gw.client.post("/models/demo/predict", json=APPLICANT,
                                     headers={**auth("client"), "prefer": "respond-async"})
            assert r.status_code == 202, r.text
            ticket_id = r.json()["ticket"]

            context = await browser.new_context(base_url=gw.url)
            try:
                page = await context.new_page()
                await _sso_sign_in(page, "ada")
                await expect(page).to_have_url(re.compile(r"/console/review$"))
                await expect(page.locator("header .who")).to_contain_text("oidc:ada")
                await page.goto(f"/console/review/{ticket_id}")
                await page.get_by_label("Note").fill("checked after single sign-on")
                await page.get_by_role("button", name="Approve").click()
                await expect(page.locator("#outcome")).to_contain_text(f"Approved {ticket_id}")
            finally:
                await context.close()
            decided = public_view(await gw.gateway.review.get(ticket_id))
            assert decided["status"] == "decided" and decided["decision"]["note"] == "checked after single sign-on"
            r = await gw.client.get(f"/review/tickets/{ticket_id}", headers=auth("reviewer"))
            assert "oidc:ada" in r.text

            context = await browser.new_context(base_url=gw.url)
            try:
                page = await context.new_page()
                sessions_before = len(await gw.gateway.store.query("sessions"))
                await _sso_sign_in(page, "bob")
                await expect(page.locator("#sso-error")).to_contain_text("not in a group that may use the console")
                assert not [c for c in await context.cookies() if c["name"] == "gw_console"]
                assert len(await gw.gateway.store.query("sessions")) == sessions_before
                r = await page.goto("/console/review")
                await expect(page).to_have_url(re.compile(r"/console/login"))
            finally:
                await context.close()

        sign_ins = [kw for kind, kw in recorded if kind == "console_sign_in"]
        assert len(sign_ins) == 1 and sign_ins[0]["actor"] == "oidc:ada" and sign_ins[0]["via"] == "oidc"
        assert sign_ins[0]["roles"] == ["reviewer"] and sign_ins[0]["groups"] == ["reviewers"]
        assert secret not in caplog.text and secret not in repr(recorded)


@MODULE_LOOP
async def test_a_callback_not_started_in_this_browser_is_refused(make_gateway, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    async with make_gateway(extra={"console": _sso_config(free_port())}) as gw:
        r = await gw.client.get("/console/sso/callback?state=abc&code=xyz")
        assert r.status_code == 400 and "not started in this browser" in r.text
        r = await gw.client.get("/console/sso/callback?state=abc&code=xyz", headers={"cookie": "gw_sso=abc"})
        assert r.status_code == 400 and "expired or already finished" in r.text
        assert await gw.gateway.store.query("sessions") == []
        r = await gw.client.get("/console/login")
        assert "Sign in with SSO" in r.text
        r = await gw.client.get("/console/sso/login")  # nobody listens at the issuer
        assert r.status_code == 502 and "unavailable" in r.text


@pytest.mark.parametrize("change, message", [
    ({"issuer": "http://idp.example.com"}, "plain http only on loopback"),
    ({"scopes": ["profile"]}, "must include openid"),
    ({"roles": {}}, "at least 1"),
    ({"roles": {"g": "client"}}, "reviewer"),
])
def test_sso_config_is_validated(change, message):
    base = {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s", "roles": {"g": "reviewer"}}
    with pytest.raises(ValueError, match=message):
        OidcConfig(**{**base, **change})
    assert "s" not in str(OidcConfig(**base).model_dump(mode="json")["client_secret"]).replace("*", "")
