"""A reviewer reads a gzipped answer as text in the console, and approving it serves the model's answer."""

from __future__ import annotations

import gzip

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.console.conftest import signed_in
from tests.rawhttp import RawUpstream
from tests.support import auth, gateway_factory

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANSWER = b'{"confidence": 0.79, "decision": "approve", "explanation": "income verified against two payslips"}'
GZIPPED = gzip.compress(ANSWER)


@pytest_asyncio.fixture(loop_scope="module")  # in the loop the gateway and the browser run in
async def upstream():
    server = await RawUpstream(lambda head: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                                            b"content-length: %d\r\n\r\n" % len(GZIPPED) + GZIPPED).start()
    yield server
    await server.stop()


@pytest.fixture
def make_gateway(tmp_path, upstream):
    return gateway_factory(tmp_path, {"scoring": {"v1": upstream.url}})


async def test_the_reviewer_sees_a_gzipped_answer_as_text(make_gateway, browser):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/models/scoring", json={"level": 2, "reason": "review low confidence"},
                            headers=auth("operator"))
        held = await gw.client.post("/models/scoring/predict", json={"applicant": "a-1"},
                                    headers={**auth("client"), "accept-encoding": "gzip"})
        assert held.status_code == 202, held.text
        ticket = held.json()["ticket"]
        async with signed_in(browser, gw, "reviewer") as page:
            await page.goto(f"/console/review/{ticket}")
            body = page.get_by_label("Model's answer")
            await expect(body).to_contain_text("income verified against two payslips")
            await expect(page.get_by_text("confidence 0.79 is below the threshold")).to_be_visible()
            await page.get_by_role("button", name="Approve").click()
            await expect(page.locator("#outcome")).to_contain_text(f"Approved {ticket}")
        final = await gw.client.get(f"/v1/decisions/{ticket}", headers=auth("client"))
        assert final.status_code == 200 and final.content == ANSWER
