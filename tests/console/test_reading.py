"""The reviewer sees what they review, not its wire format (real browser, real gateway, the unmodified openai SDK).

A held chat completion is its conversation and the assistant's text; the reviewer's typed
text is what the SDK client receives (streamed when it asked for a stream); a level-4 chat
task is answered the same way; a credit decision is overridden through its form field.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from playwright.async_api import expect

from gateway.review.tickets import public_view
from tests.console.conftest import APPLICANT, signed_in
from tests.support import TOKENS, auth, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

OVERRIDE = 'button[name="decision"][value="override"]'
SCRIPT = "<script>window.__pwned = 1</script>"


async def _level(gw, level: int) -> None:
    r = await gw.client.put("/admin/oversight/models/demo", json={"level": level, "reason": "reading test"},
                            headers=auth("operator"))
    assert r.status_code in (200, 202), r.text


def _client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=TOKENS["client"], max_retries=0, timeout=60)


async def _pending_ticket(gw) -> str:
    async def one():
        tickets = [t for t in await gw.gateway.review.list(limit=10) if t.kind in ("hold", "human")]
        return tickets[0].id if tickets else None
    return await eventually(one, timeout=10)


async def test_a_held_chat_is_a_conversation_and_the_reviewers_text_is_the_answer(make_gateway, browser):
    async with make_gateway() as gw:
        await _level(gw, 3)
        messages = [{"role": "system", "content": "You are the bank's credit assistant."},
                    {"role": "user", "content": f"Can I raise my limit? {SCRIPT}"}]
        asking = asyncio.create_task(_client(gw).chat.completions.create(model="demo", messages=messages))
        ticket = await _pending_ticket(gw)
        async with signed_in(browser, gw, "reviewer") as page:
            await page.goto(f"/console/review/{ticket}")
            turns = page.get_by_label("Conversation").locator("li")
            await expect(turns).to_have_count(2)
            await expect(turns.nth(0)).to_contain_text("system")
            await expect(turns.nth(0)).to_contain_text("You are the bank's credit assistant.")
            await expect(turns.nth(1)).to_contain_text(f"Can I raise my limit? {SCRIPT}")  # shown as text
            reply = page.get_by_label("Model's reply")
            await expect(reply).to_contain_text("Demo answer")
            await expect(reply).to_contain_text(SCRIPT)  # the model's answer quotes it: text, not markup
            assert await page.evaluate("window.__pwned === undefined")
            assert await page.locator("main script").count() == 0
            await expect(page.get_by_label("Request body")).to_be_hidden()  # the raw JSON, one click away
            await page.get_by_text("Raw request").click()
            await expect(page.get_by_label("Request body")).to_contain_text('"messages"')

            box = page.get_by_label("Your answer")
            assert (await box.input_value()).startswith("Demo answer")  # starts as the model's text
            await box.fill("Your limit can rise to 3,000 EUR; a person checked your file.")
            await page.locator(OVERRIDE).click()
            await expect(page.locator("#outcome")).to_contain_text(f"Overrode {ticket}")

        completion = await asyncio.wait_for(asking, 15)
        assert completion.choices[0].message.content == "Your limit can rise to 3,000 EUR; a person checked your file."
        assert completion.choices[0].message.role == "assistant"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.object == "chat.completion" and completion.model == "demo" and completion.id
        decided = public_view(await gw.gateway.review.get(ticket))["decision"]
        assert decided["response"]["choices"][0]["message"]["content"].startswith("Your limit can rise")


async def test_a_held_stream_shows_the_assembled_text_and_streams_the_reviewers_answer(make_gateway, browser):
    async with make_gateway() as gw:
        await _level(gw, 3)

        async def ask():
            stream = await _client(gw).chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "when is my card arriving?"}], stream=True)
            return [chunk async for chunk in stream]

        asking = asyncio.create_task(ask())
        ticket = await _pending_ticket(gw)
        async with signed_in(browser, gw, "reviewer") as page:
            await page.goto(f"/console/review/{ticket}")
            reply = page.get_by_label("Model's reply")
            await expect(reply).to_contain_text("Demo answer")
            await expect(reply).not_to_contain_text("data:")  # the assistant's text, not SSE lines
            await expect(page.get_by_text("Raw answer (server-sent events)")).to_be_visible()
            await page.get_by_label("Your answer").fill("Your card was posted on Monday.")
            await page.locator(OVERRIDE).click()
            await expect(page.locator("#outcome")).to_contain_text(f"Overrode {ticket}")

        chunks = await asyncio.wait_for(asking, 15)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Your card was posted on Monday."
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_a_level_4_chat_task_is_answered_with_the_reviewers_text(make_gateway, browser, demo):
    async with make_gateway() as gw:
        await _level(gw, 4)
        calls = demo.stats()["requests"]
        asking = asyncio.create_task(_client(gw).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "please close my account"}]))
        ticket = await _pending_ticket(gw)
        async with signed_in(browser, gw, "reviewer") as page:
            await page.goto(f"/console/review/{ticket}")
            await expect(page.get_by_label("Conversation").locator("li")).to_contain_text(["please close my account"])
            box = page.get_by_label("Your answer")
            await expect(box).to_have_value("")  # the model was not called
            await expect(page.get_by_role("button", name="Approve")).to_be_disabled()
            await box.fill("Your account is closed; the balance goes to your current account.")
            await page.locator(OVERRIDE).click()
            await expect(page.locator("#outcome")).to_contain_text(f"Overrode {ticket}")
            await page.goto(f"/console/review/{ticket}")  # the decided ticket shows the text sent
            await expect(page.get_by_label("Answer sent")).to_contain_text("Your account is closed")

        completion = await asyncio.wait_for(asking, 15)
        assert completion.choices[0].message.content == "Your account is closed; the balance goes to your current account."
        assert demo.stats()["requests"] == calls  # a human answered: the model was never asked


async def test_a_credit_decision_is_overridden_through_its_form_field(make_gateway, browser):
    policy = {"models": {"demo": {"review_fields": [{"pointer": "/decision", "values": ["approve", "deny"],
                                                     "label": "Credit decision"}]}}}
    async with make_gateway(policy=policy) as gw:
        await _level(gw, 3)
        held = await gw.client.post("/models/demo/predict", json=APPLICANT,
                                    headers={**auth("client"), "prefer": "respond-async"})
        assert held.status_code == 202, held.text
        ticket = held.json()["ticket"]
        model_said = json.loads(public_view(await gw.gateway.review.get(ticket))["recommendation"]["body"])
        other = "deny" if model_said["decision"] == "approve" else "approve"
        async with signed_in(browser, gw, "reviewer") as page:
            await page.goto(f"/console/review/{ticket}")
            select = page.get_by_label("Credit decision", exact=True)
            await expect(select).to_have_value(json.dumps(model_said["decision"]))  # starts as the model's
            await expect(page.get_by_label("Override answer")).to_be_hidden()  # the raw JSON, one click away
            await page.get_by_text("Raw JSON answer instead").click()
            await expect(page.get_by_label("Override answer")).to_be_visible()
            await select.select_option(label=other)
            await page.locator(OVERRIDE).click()
            await expect(page.locator("#outcome")).to_contain_text(f"Overrode {ticket}")

        final = await gw.client.get(f"/v1/decisions/{ticket}", headers=auth("client"))
        assert final.status_code == 200 and final.headers["x-decision"] == "override"
        assert final.json() == {**model_said, "decision": other}  # the model's answer with the field changed
