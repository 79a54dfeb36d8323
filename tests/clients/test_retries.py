"""Retries join their ticket: one logical call, one ticket, one model call, whatever the client retries.

See `gateway.review.retries` for exactly what counts as a retry: the same Idempotency-Key;
a byte-identical request while its twin is pending; the same, marked as a retry by the
SDK (`x-stainless-retry-count`), after the twin was decided.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.clients.conftest import client_token, message
from tests.support import auth


def _tickets_for(gateway, model: str, text: str) -> list[dict]:
    tickets = gateway.get(f"/review/tickets?model={model}&status=all&limit=500", "reviewer").json()["tickets"]
    return [t for t in tickets if t["kind"] != "sample" and text in t["request"]["body"]]


def test_an_sdk_that_times_out_and_retries_makes_one_ticket_and_one_model_call(gateway, reviewer, demo):
    text = f"slow human ({uuid.uuid4().hex[:8]})"
    reviewer.will("held", "override", after=3.0, response="decided after the first attempt gave up")
    client = openai.OpenAI(base_url=gateway.v1, api_key=client_token(), timeout=2.0, max_retries=2)
    started = time.monotonic()
    completion = client.chat.completions.create(model="held", messages=message(text))
    assert time.monotonic() - started > 2.0  # the first attempt timed out; a retry got the answer
    assert completion.choices[0].message.content == "decided after the first attempt gave up"
    assert len(_tickets_for(gateway, "held", text)) == 1
    assert demo.stats()["requests"] == 1


def test_the_same_idempotency_key_names_the_same_ticket_and_answer(gateway, demo):
    key = uuid.uuid4().hex
    body = {"model": "held", "messages": message(f"idempotent ({key[:8]})")}
    headers = {**auth("client"), "idempotency-key": key, "prefer": "respond-async"}
    first = httpx.post(gateway.v1 + "/chat/completions", json=body, headers=headers, timeout=30)
    again = httpx.post(gateway.v1 + "/chat/completions", json=body, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 202 and first.json()["ticket"] == again.json()["ticket"]
    ticket = first.json()["ticket"]
    assert gateway.post(f"/review/tickets/{ticket}/decision", {"action": "override", "response": "once"},
                        "reviewer").status_code == 200
    later = httpx.post(gateway.v1 + "/chat/completions", json=body, headers={**auth("client"), "idempotency-key": key},
                       timeout=30)
    assert later.status_code == 200 and later.json()["choices"][0]["message"]["content"] == "once"
    assert later.headers["x-ticket"] == ticket
    other = httpx.post(gateway.v1 + "/chat/completions", json={**body, "messages": message("something else")},
                       headers=headers, timeout=30)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert demo.stats()["requests"] == 1


def test_a_byte_identical_request_joins_its_pending_twin_and_a_later_one_does_not(gateway, demo):
    body = json.dumps({"model": "held", "messages": message(f"twice ({uuid.uuid4().hex[:8]})")}).encode()
    headers = {**auth("client"), "content-type": "application/json", "prefer": "respond-async"}
    first = httpx.post(gateway.v1 + "/chat/completions", content=body, headers=headers, timeout=30).json()["ticket"]
    twin = httpx.post(gateway.v1 + "/chat/completions", content=body, headers=headers, timeout=30).json()["ticket"]
    assert twin == first and demo.stats()["requests"] == 1
    gateway.post(f"/review/tickets/{first}/decision", {"action": "approve"}, "reviewer")
    retried = httpx.post(gateway.v1 + "/chat/completions", content=body, headers={**headers, "x-stainless-retry-count": "1"},
                         timeout=30)
    assert retried.status_code == 200 and retried.headers["x-ticket"] == first  # an SDK retry gets the decision
    fresh = httpx.post(gateway.v1 + "/chat/completions", content=body, headers=headers, timeout=30).json()["ticket"]
    assert fresh != first and demo.stats()["requests"] == 2  # the same question asked anew is a new request


@pytest.mark.parametrize("who", ["client2"])
def test_another_callers_identical_request_is_its_own(gateway, demo, who):
    body = {"model": "held", "messages": message(f"mine ({uuid.uuid4().hex[:8]})")}
    first = httpx.post(gateway.v1 + "/chat/completions", json=body, timeout=30,
                       headers={**auth("client"), "prefer": "respond-async"}).json()["ticket"]
    theirs = httpx.post(gateway.v1 + "/chat/completions", json=body, timeout=30,
                        headers={**auth(who), "prefer": "respond-async"}).json()["ticket"]
    assert first != theirs and demo.stats()["requests"] == 2
