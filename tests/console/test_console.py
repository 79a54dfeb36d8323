"""The reviewer console and the operator dashboard in a real browser against a real gateway."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import pytest
from playwright.async_api import expect

from gateway.evidence import unpack_body
from gateway.review.tickets import public_view
from tests.console.conftest import APPLICANT, console_state, signed_in
from tests.support import TOKENS, auth, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _set_level(gw, level: int, model: str | None = "demo", who: str = "operator") -> None:
    path = "/admin/oversight/global" if model is None else f"/admin/oversight/models/{model}"
    r = await gw.client.put(path, json={"level": level, "reason": "console test"}, headers=auth(who))
    assert r.status_code in (200, 202), r.text


async def _hold(gw, applicant: dict | None = None) -> dict:
    r = await gw.client.post("/models/demo/predict", json=applicant or APPLICANT,
                             headers={**auth("client"), "prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["x-oversight-route"] == "held", r.text
    return r.json()


async def _open_queue(page) -> None:
    await page.goto("/console/review")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


async def test_a_held_request_appears_in_the_queue_without_a_reload(make_gateway, browser):
    async with make_gateway() as gw:
        async with signed_in(browser, gw, "reviewer") as page:
            await _set_level(gw, 3)
            await _open_queue(page)
            await expect(page.locator("tr[data-ticket]")).to_have_count(0)
            await page.evaluate("window.__sameDocument = true")

            held = await _hold(gw)
            row = page.locator(f'tr[data-ticket="{held["ticket"]}"]')
            await expect(row).to_be_visible(timeout=5000)
            ticket = public_view(await gw.gateway.review.get(held["ticket"]))
            await expect(row.locator('td[data-label="Model"]')).to_contain_text("demo v1")
            await expect(row.locator('td[data-label="Level"]')).to_have_text("3")
            await expect(row.locator('td[data-label="Why held"]')).to_have_text(ticket["reason"])
            await expect(row.locator('td[data-label="Claimed by"]')).to_have_text("—")
            await expect(page.locator("#queue-n")).to_have_text("1")

            second = await _hold(gw, {"applicant": {"id": "c-18", "group": "A", "income": 88000}})
            first_row = page.locator("tr[data-ticket]").first
            await expect(first_row).to_have_attribute("data-ticket", second["ticket"])  # newest first
            await expect(page.locator("#queue-n")).to_have_text("2")

            # claimed on the API (as if by a reviewer on another replica): the row says so, still no reload
            r = await gw.client.post(f"/review/tickets/{held['ticket']}/claim", headers=auth("reviewer2"))
            assert r.status_code == 200
            await expect(row.locator('td[data-label="Claimed by"]')).to_have_text("test-reviewer2")
            assert await page.evaluate("window.__sameDocument") is True

            # the page's event stream goes away with the page
            hub = console_state(gw).hub

            async def one():  # this page's; the page before it closed its own once the server saw it go
                return hub.streams == 1
            await eventually(one, timeout=5)
            await page.goto("about:blank")

            async def closed():
                return hub.streams == 0
            await eventually(closed, timeout=5)


async def test_a_reviewer_approves_and_the_waiting_client_gets_the_answer(make_gateway, browser):
    async with make_gateway() as gw:
        async with signed_in(browser, gw, "reviewer") as page:
            await _set_level(gw, 3)
            await _open_queue(page)
            started = time.monotonic()
            waiting = asyncio.create_task(gw.client.post("/models/demo/predict", json=APPLICANT,
                                                         headers={**auth("client"), "prefer": "wait=30"}))
            row = page.locator("tr[data-ticket]").first
            await expect(row).to_be_visible(timeout=5000)
            ticket_id = await row.get_attribute("data-ticket")
            await row.get_by_role("link", name=ticket_id).click()
            await expect(page.get_by_role("heading", name=f"Ticket {ticket_id}")).to_be_visible()
            ticket = public_view(await gw.gateway.review.get(ticket_id))
            recommendation = unpack_body(ticket["recommendation"])
            await expect(page.get_by_label("Model's answer")).to_contain_text(json.loads(recommendation)["decision"])

            await page.get_by_label("Note").fill("income verified against the file")
            await page.get_by_role("button", name="Approve").click()
            await expect(page.locator("#outcome")).to_contain_text(f"Approved {ticket_id}")
            await expect(page).to_have_url(re.compile(r"/console/review$"))
            await expect(page.locator("tr[data-ticket]")).to_have_count(0)

            answer = await asyncio.wait_for(waiting, 15)
            assert time.monotonic() - started < 15
            assert answer.status_code == ticket["recommendation"]["status"] == 200
            assert answer.content == recommendation  # the model's answer, byte for byte
            assert (answer.headers["x-decision"], answer.headers["x-decided-by"]) == ("approve", "test-reviewer")
            assert answer.headers["x-oversight-route"] == "held"
            decided = public_view(await gw.gateway.review.get(ticket_id))
            assert decided["decision"]["note"] == "income verified against the file"


async def test_an_override_body_edited_in_the_console_is_what_the_client_gets(make_gateway, browser):
    async with make_gateway() as gw:
        async with signed_in(browser, gw, "reviewer") as page:
            await _set_level(gw, 3)
            held = await _hold(gw)
            await page.goto(f"/console/review/{held['ticket']}")
            box = page.get_by_label("Override answer")
            prefilled = json.loads(await box.input_value())
            assert prefilled == json.loads(unpack_body(public_view(await gw.gateway.review.get(held["ticket"]))["recommendation"]))

            edited = {**prefilled, "decision": "deny", "reason": "income could not be verified", "reviewed": True}
            await box.fill(json.dumps(edited, indent=2))
            await page.get_by_label("Note").fill("applicant's income unverified")
            await page.keyboard.press("Escape")  # leave the text field: shortcuts are live again
            await page.keyboard.press("o")  # override
            await expect(page.locator("#outcome")).to_contain_text(f"Overrode {held['ticket']}")

            final = await gw.client.get(f"/v1/decisions/{held['ticket']}", headers=auth("client"))
            assert final.status_code == 200
            assert final.json() == edited
            assert final.headers["x-decision"] == "override"
            assert final.headers["content-type"] == "application/json"

            # a body that is not JSON is refused in the page, and nothing is decided
            another = await _hold(gw)
            await page.goto(f"/console/review/{another['ticket']}")
            await page.get_by_label("Override answer").fill("{not json")
            await page.get_by_role("button", name="Override").click()
            await expect(page.locator("#outcome")).to_contain_text("not valid JSON")
            assert public_view(await gw.gateway.review.get(another["ticket"]))["status"] == "pending"


async def test_the_kill_switch_from_the_dashboard_stops_model_calls(make_gateway, browser, demo):
    async with make_gateway() as gw:
        async with signed_in(browser, gw, "operator") as page:
            await expect(page).to_have_url(re.compile(r"/console$"))
            r = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
            assert r.status_code == 200 and r.headers["x-oversight-route"] in ("auto", "sampled")

            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            unconfirmed = await page.request.post(f"{gw.url}/console/kill", headers={"X-CSRF-Token": csrf},
                                                  form={"scope": "global", "reason": "no confirmation"})
            assert unconfirmed.status == 400 and "confirm" in (await unconfirmed.json())["error"]["message"]
            assert gw.gateway.state.level_for("demo") == 0

            await page.get_by_text("Pull the kill switch…").click()
            form = page.locator("#kill-form")
            await form.get_by_label("Reason").fill("answers look wrong after the 14:00 data refresh")
            await form.get_by_role("button", name="Confirm kill switch").click()  # the box is not ticked: the browser stops it
            await page.wait_for_timeout(200)
            assert gw.gateway.state.level_for("demo") == 0
            await form.get_by_label("I confirm").check()
            await form.get_by_role("button", name="Confirm kill switch").click()
            await expect(page.locator("#outcome")).to_contain_text("Kill switch pulled")
            await expect(page.locator('[data-model="demo"] [data-effective]')).to_have_attribute("data-effective", "4")

            before = demo.stats()["requests"]
            r = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
            assert r.status_code == 202
            assert r.headers["x-oversight-route"] == "human"
            assert demo.stats()["requests"] == before  # the model was not called
            audit = await gw.gateway.store.audit_log(key_prefix="level/global", limit=1)
            assert (audit[0]["action"], audit[0]["actor"], audit[0]["to"]) == ("kill", "test-operator", 4)
            assert audit[0]["reason"] == "answers look wrong after the 14:00 data refresh"

            # lowering from 4 by the same operator waits for a second one: the page says so
            await page.locator("#g-level").select_option("0")
            await page.locator("#g-reason").fill("false alarm")
            await page.get_by_role("button", name="Set global level").click()
            await expect(page.locator("#outcome")).to_contain_text("needs a second operator")
            change = (await gw.gateway.levels.pending())[0]
            await page.get_by_role("button", name=f"Approve {change['id']}").click()
            await expect(page.locator("#outcome")).to_contain_text("a second, different operator must approve it")
            assert gw.gateway.state.level_for("demo") == 4


async def test_a_reviewer_cannot_reach_operator_actions(make_gateway, browser):
    async with make_gateway() as gw:
        await _set_level(gw, 3)
        await _set_level(gw, 1, who="operator")  # lowering from 3: filed for a second operator
        change = (await gw.gateway.levels.pending())[0]
        incident = (await gw.client.post("/admin/incidents", headers=auth("operator"), json={
            "category": "performance", "severity": "high", "summary": "slow answers", "model": "demo"})).json()
        held = await _hold(gw)
        async with signed_in(browser, gw, "reviewer") as page:
            await expect(page).to_have_url(re.compile(r"/console/review$"))
            await expect(page.get_by_role("link", name="Dashboard")).to_have_count(0)
            refused = await page.goto("/console")
            assert refused.status == 403
            await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()

            await page.goto("/console/review")
            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            crafted = [
                ("/console/levels", {"scope": "global", "level": "0", "reason": "crafted"}),
                ("/console/levels", {"scope": "demo", "level": "0", "reason": "crafted"}),
                ("/console/kill", {"scope": "global", "reason": "crafted", "confirm": "yes"}),
                (f"/console/changes/{change['id']}/approve", {"reason": "crafted"}),
                ("/console/models/demo/activate", {"version": "v2", "reason": "crafted"}),
                ("/console/models/demo/rollback", {"to": "v2", "reason": "crafted"}),
                (f"/console/incidents/{incident['id']}/ack", {"note": "crafted"}),
                (f"/console/incidents/{incident['id']}/notes", {"note": "crafted"}),
                (f"/console/incidents/{incident['id']}/resolve", {"note": "crafted"}),
            ]
            for path, form in crafted:
                r = await page.request.post(f"{gw.url}{path}", form={**form, "csrf_token": csrf},
                                            headers={"X-CSRF-Token": csrf})
                assert r.status == 403, (path, r.status)
                error = (await r.json())["error"]
                assert error["type"] == "forbidden" and "needs operator" in error["message"], path
            api = await page.request.get(f"{gw.url}/console")
            assert api.status == 403 and (await api.json())["error"]["type"] == "forbidden"

            # the same session and token do work for what a reviewer may do: the refusals were about the role
            r = await page.request.post(f"{gw.url}/console/review/{held['ticket']}/claim", headers={"X-CSRF-Token": csrf})
            assert r.status == 200 and (await r.json())["result"]["claimed_by"] == "test-reviewer"

        assert gw.gateway.state.level_for("demo") == 3
        assert gw.gateway.state.global_level == 0
        assert gw.gateway.state.active["demo"] == "v1"
        assert (await gw.gateway.levels.pending())[0]["status"] == "pending"
        assert (await gw.gateway.incidents.get(incident["id"])).to_doc()["status"] == "open"
        assert not [e for e in await gw.gateway.store.audit_log(limit=100) if e.get("actor") == "test-reviewer"]


async def test_a_form_posted_without_the_csrf_token_is_refused(make_gateway, browser):
    async with make_gateway() as gw:
        async with signed_in(browser, gw, "operator") as page:
            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            # the real form, posted by the browser itself, without its hidden token and without the script
            await page.evaluate("""() => {
                const form = document.querySelector('form[action="/console/levels"]');
                form.removeAttribute('data-js');
                form.querySelector('input[name=csrf_token]').remove();
            }""")
            await page.locator("#g-level").select_option("3")
            await page.locator("#g-reason").fill("no token")
            async with page.expect_navigation() as navigation:
                await page.get_by_role("button", name="Set global level").click()
            response = await navigation.value
            assert response.status == 403
            error = (await response.json())["error"]
            assert error["type"] == "forbidden" and "CSRF" in error["message"] and error["request_id"]

            for headers, form in [({}, {}), ({"X-CSRF-Token": "x" * len(csrf)}, {}), ({}, {"csrf_token": csrf[:-1]}),
                                  ({"X-CSRF-Token": ""}, {})]:
                r = await page.request.post(f"{gw.url}/console/kill", headers=headers,
                                            form={"scope": "global", "reason": "no token", "confirm": "yes", **form})
                assert r.status == 403 and (await r.json())["error"]["type"] == "forbidden"
            assert gw.gateway.state.global_level == 0 and gw.gateway.state.level_for("demo") == 0
            assert not [e for e in await gw.gateway.store.audit_log(key_prefix="level/", limit=10)]

            # with its token the very same form goes through (a plain form post: the result page)
            await page.goto("/console")
            await page.evaluate("document.querySelector('form[action=\"/console/levels\"]').removeAttribute('data-js')")
            await page.locator("#g-level").select_option("2")
            await page.locator("#g-reason").fill("with the token")
            await page.get_by_role("button", name="Set global level").click()
            await expect(page.get_by_role("heading", name="Done")).to_be_visible()
            assert gw.gateway.state.global_level == 2


async def test_the_session_cookie_is_strict_and_the_token_never_shows(make_gateway, browser, caplog):
    caplog.set_level(logging.DEBUG)
    async with make_gateway() as gw:
        await _set_level(gw, 3)
        held = await _hold(gw)
        context = await browser.new_context(base_url=gw.url, viewport={"width": 1280, "height": 800})
        try:
            urls: list[str] = []
            context.on("request", lambda request: urls.append(request.url))
            page = await context.new_page()
            await page.goto("/console/review")
            await expect(page).to_have_url(re.compile(r"/console/login\?next=/console/review$"))
            await page.get_by_label("Access token").fill("gw_not_a_token")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("alert")).to_contain_text("not valid")
            assert not await context.cookies()
            await page.get_by_label("Access token").fill(TOKENS["operator"])
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(re.compile(r"/console/review$"))  # back where it was going

            (cookie,) = [c for c in await context.cookies() if c["name"] == "gw_console"]
            assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
            assert cookie["path"] == "/console" and cookie["secure"] is False  # plain http here; Secure over TLS
            assert 8 * 3600 - 60 < cookie["expires"] - time.time() <= 8 * 3600
            assert await page.evaluate("document.cookie") == ""  # scripts cannot read it

            pages = ["/console/review", f"/console/review/{held['ticket']}", "/console"]
            for path in pages:
                await page.goto(path)
                html = await page.content()
                for token in TOKENS.values():
                    assert token not in html, (path, token)
                assert cookie["value"] not in html
            assert urls and not [u for u in urls for token in TOKENS.values() if token in u]
            stored = json.dumps(await gw.gateway.store.query("sessions"))
            assert "test-operator" in stored and TOKENS["operator"] not in stored and cookie["value"] not in stored
            logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
            assert "console sign-in" in logged and TOKENS["operator"] not in logged and "gw_not_a_token" not in logged

            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(re.compile(r"/console/login$"))
            assert not [c for c in await context.cookies() if c["name"] == "gw_console"]
            assert await gw.gateway.store.query("sessions") == []
            await page.goto("/console")
            await expect(page).to_have_url(re.compile(r"/console/login\?next=/console$"))

            # the old cookie, replayed, is dead
            replay = {"cookie": f"gw_console={cookie['value']}"}
            r = await gw.client.get("/console", headers={**replay, "accept": "text/html"})
            assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
            r = await gw.client.post("/console/kill", headers={**replay, "x-csrf-token": csrf},
                                     data={"scope": "global", "reason": "after logout", "confirm": "yes"})
            assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
            assert gw.gateway.state.global_level == 0
        finally:
            await context.close()


async def _backfill_traffic(gw, model: str, version: str) -> None:
    """An hour of earlier minute buckets, so the charts have a shape on the screenshot.

    Written through the store's own counters (the same keys and fields the data plane's
    counters flush), for the 59 minutes before the real traffic this test sends.
    """
    from gateway.incidents.counters import TRAFFIC_TTL, _traffic_key
    from gateway.incidents.signals import latency_bucket

    now = time.time()
    counts = {}
    for minutes_ago in range(1, 60):
        at = now - minutes_ago * 60
        requests = 30 + (minutes_ago * 37) % 23
        errors = 1 if minutes_ago % 11 == 0 else 0
        ms = 18 + (minutes_ago % 7) * 1.5 + (9 if 20 <= minutes_ago <= 24 else 0)
        counts[_traffic_key(model, version, at)] = {"requests": requests, "errors": errors, "reached": requests,
                                                   f"lat{latency_bucket(ms)}": requests}
    await gw.gateway.store.add_counts(counts, TRAFFIC_TTL)


async def test_screenshots_and_narrow_screens(tmp_path, demo, browser, screenshots):
    """Both pages with realistic content, at 1280x800 and at 400 px wide; labelled controls."""
    from tests.support import gateway_factory

    make = gateway_factory(tmp_path, {"credit": {"v1": demo.url, "v2": demo.url, "v3": demo.url},
                                      "support-chat": {"v1": demo.url}})
    async with make() as gw:
        c = gw.client
        for i in range(24):
            r = await c.post("/models/credit/predict", headers=auth("client"), json={
                "applicant": {"id": f"a-{i}", "group": "AB"[i % 2], "income": 30000 + 2500 * i, "requested": 8000 + 500 * i}})
            assert r.status_code == 200
        for i in range(6):
            r = await c.post("/v1/chat/completions", headers=auth("client"), json={
                "model": "support-chat", "messages": [{"role": "user", "content": f"Where is my card? ({i})"}]})
            assert r.status_code == 200, r.text
        for version in ("v2", "v3"):
            r = await c.post("/admin/models/credit/activate", headers=auth("operator"),
                             json={"version": version, "reason": f"release {version} after offline evaluation"})
            assert r.status_code == 200, r.text
        r = await c.post("/admin/models/credit/rollback", headers=auth("operator"),
                         json={"reason": "v3 approval rate for group B dropped in canary"})
        assert r.status_code == 200 and r.json()["to"] == "v2"
        r = await c.post("/admin/incidents", headers=auth("operator"), json={
            "category": "bias", "severity": "high", "model": "credit", "raise_to": 3,
            "summary": "Approval rate for group B fell 12 % after the v3 release"})
        assert r.status_code == 201, r.text
        await _set_level(gw, 3, model="support-chat", who="operator2")
        await _set_level(gw, 2, model="support-chat")  # lowering from 3: waits for a second operator
        await _backfill_traffic(gw, "credit", "v2")
        held = []
        for i, (group, income) in enumerate([("B", 38500), ("A", 61000), ("B", 45200)]):
            r = await c.post("/models/credit/predict", headers={**auth("client"), "prefer": "respond-async"},
                             json={"applicant": {"id": f"h-{i}", "group": group, "income": income, "requested": 15000}})
            assert r.status_code == 202
            held.append(r.json()["ticket"])
        r = await c.post(f"/review/tickets/{held[0]}/claim", headers=auth("reviewer2"))
        assert r.status_code == 200
        await gw.gateway.monitor.flush()

        async with signed_in(browser, gw, "reviewer") as page:
            await _open_queue(page)
            rows = page.locator("tr[data-ticket][data-kind=hold]")
            await expect(rows).to_have_count(3)
            await page.screenshot(path=str(screenshots / "console-review.png"))
            await page.goto(f"/console/review/{held[1]}")
            await page.screenshot(path=str(screenshots / "console-ticket.png"))
            await _assert_labelled(page)

        async with signed_in(browser, gw, "operator") as page:
            credit = page.locator('[data-model="credit"]')
            await expect(credit.locator("[data-effective]")).to_have_attribute("data-effective", "3")
            waiting = [public_view(t) for t in await gw.gateway.review.list(status="pending", model="credit")]  # 3 held, and any 2 % samples
            assert sum(t["kind"] == "hold" for t in waiting) == 3
            await expect(credit).to_contain_text(f"{len(waiting)} waiting")
            await expect(credit).to_contain_text("v2")
            await expect(page.locator("[data-incident]")).to_contain_text("Approval rate for group B fell")
            await expect(page.get_by_role("heading", name="Pending approvals")).to_contain_text("1")
            assert await credit.locator("svg rect.bar").count() >= 50  # the hour's minutes
            await credit.get_by_text("Versions (3) and history").click()
            await expect(credit.locator("ol.history")).to_contain_text("v3 → v2")
            await credit.get_by_text("Versions (3) and history").click()
            await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=str(screenshots / "console-dashboard.png"))
            await page.screenshot(path=str(screenshots / "console-dashboard-full.png"), full_page=True)
            await _assert_labelled(page)

            await page.set_viewport_size({"width": 400, "height": 800})
            for path, name in (("/console", "dashboard"), ("/console/review", "review"), (f"/console/review/{held[2]}", "ticket")):
                await page.goto(path)
                overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 400px"
                await page.screenshot(path=str(screenshots / f"console-{name}-narrow.png"))


async def _assert_labelled(page) -> None:
    """Every visible form control has a label (or an aria-label); buttons have a name."""
    unlabelled = await page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea'))
        .filter(el => el.type !== 'hidden' && !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
        .map(el => el.outerHTML)""")
    assert unlabelled == []
    nameless = await page.evaluate("""() => Array.from(document.querySelectorAll('button'))
        .filter(b => !b.textContent.trim() && !b.getAttribute('aria-label')).map(b => b.outerHTML)""")
    assert nameless == []
