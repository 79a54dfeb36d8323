"""Console tests: a real gateway on loopback and a real headless Chromium driven by Playwright.

The browser is started once per test module (in the module's event loop); each test gets
a fresh gateway and fresh browser contexts. Chromium must be installed: these tests fail,
never skip, when it is missing (CI installs it; scripts/test.sh does too).
"""

from __future__ import annotations

import os
import re
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support import ROOT, TOKENS, gateway_factory

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
APPLICANT = {"applicant": {"id": "c-17", "group": "B", "income": 41000, "requested": 12000}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    from playwright.async_api import async_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium, or set CHROMIUM=path)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
def make_gateway(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url, "v2": demo.url}})


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


async def sign_in(page, who: str) -> None:
    await page.goto("/console/login")
    await page.get_by_label("Access token").fill(TOKENS[who])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"/console(/review)?$"))


@asynccontextmanager
async def signed_in(browser, gw, who: str, *, width: int = 1280, height: int = 800):
    """A fresh browser context (its own cookies) signed in as `who`; closed before the gateway stops."""
    context = await browser.new_context(base_url=gw.url, viewport={"width": width, "height": height})
    try:
        page = await context.new_page()
        await sign_in(page, who)
        yield page
    finally:
        await context.close()


def console_state(gw):
    """The console's per-gateway state (sessions, the event hub) inside the running gateway."""
    return gw.gateway
