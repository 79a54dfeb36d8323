"""The official `openai` Python SDK, unmodified (no `Prefer`, no extra headers), through held answers.

At level 3 the answer waits for a human: approved, the client gets the model's answer;
overridden, the reviewer's; rejected, it raises with the reviewer's note; undecided in
time, it raises naming the ticket, which can still be decided and fetched later. Level 2
holds a low-confidence stream, level 4 never calls the model. Every test counts the demo
model's calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest

from tests.clients.conftest import client_token, message


def _client(gateway, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=client_token(), **kw)


def _unique(text: str) -> str:
    return f"{text} ({uuid.uuid4().hex[:8]})"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_approved_answer_is_the_models_answer(gateway, reviewer, demo, stream):
    reviewer.will("held", "approve")
    ask = _unique("what is my limit?")
    if stream:
        chunks = list(_client(gateway).chat.completions.create(model="held", messages=message(ask), stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(chunks) > 2  # the model's own chunks, replayed
    else:
        completion = _client(gateway).chat.completions.create(model="held", messages=message(ask))
        text = completion.choices[0].message.content
    assert text.startswith("Demo answer") and ask in text
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_answer_text_override_is_built_into_the_answer(gateway, reviewer, demo, stream):
    """`answer_text` on the review API: the gateway builds the completion (and its stream) from the reviewer's text."""
    reviewer.will("held", "override", answer_text="A person says: 1,500 EUR.")
    if stream:
        chunks = list(_client(gateway).chat.completions.create(model="held", messages=message(_unique("limit?")), stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "A person says: 1,500 EUR."
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        completion = _client(gateway).chat.completions.create(model="held", messages=message(_unique("limit?")))
        assert completion.choices[0].message.content == "A person says: 1,500 EUR."
        assert (completion.model, completion.object, completion.choices[0].finish_reason) == ("held", "chat.completion", "stop")
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_override_is_the_reviewers_answer(gateway, reviewer, demo, stream):
    reviewer.will("held", "override", response="Your limit is 2,000 EUR (checked by a person).")
    if stream:
        chunks = list(_client(gateway).chat.completions.create(model="held", messages=message(_unique("limit?")), stream=True))
        assert [c.choices[0].delta.content for c in chunks if c.choices][0] == "Your limit is 2,000 EUR (checked by a person)."
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        raw = _client(gateway).chat.completions.with_raw_response.create(model="held", messages=message(_unique("limit?")))
        assert raw.parse().choices[0].message.content == "Your limit is 2,000 EUR (checked by a person)."
        assert (raw.headers["x-decision"], raw.headers["x-decided-by"]) == ("override", "test-reviewer")
        assert raw.headers["x-oversight-route"] == "held"
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_rejection_raises_with_the_reviewers_note(gateway, reviewer, demo, stream):
    reviewer.will("held", "reject", note="the applicant's income could not be verified")
    with pytest.raises(openai.APIError) as raised:
        result = _client(gateway).chat.completions.create(model="held", messages=message(_unique("approve me")), stream=stream)
        if stream:
            list(result)
    assert "income could not be verified" in str(raised.value)
    if not stream:
        assert isinstance(raised.value, openai.PermissionDeniedError) and raised.value.code == "rejected_by_reviewer"
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_no_decision_in_time_raises_naming_the_ticket_which_is_decided_later(gateway, reviewer, demo, stream):
    started = time.monotonic()
    with pytest.raises(openai.APIError) as raised:
        result = _client(gateway).chat.completions.create(model="impatient", messages=message(_unique("hello")), stream=stream)
        if stream:
            list(result)
    assert time.monotonic() - started < 5  # one wait of 1 s: not retried
    body = raised.value.body
    ticket = body["ticket"]
    assert raised.value.code == "decision_pending" and ticket in str(raised.value) and body["status_url"].endswith(ticket)
    if not stream:
        assert raised.value.status_code == 423
    assert gateway.get(body["status_url"], "client").status_code == 202  # still pending, still there
    r = gateway.post(f"/review/tickets/{ticket}/decision", {"action": "override", "response": "decided later"}, "reviewer")
    assert r.status_code == 200
    later = gateway.get(body["status_url"], "client")
    assert later.status_code == 200 and later.json()["choices"][0]["message"]["content"] == "decided later"
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_async_client_gets_the_decision_too(gateway, reviewer, demo, stream):
    reviewer.will("held", "override", response="from a person, asynchronously")

    async def call():
        client = openai.AsyncOpenAI(base_url=gateway.v1, api_key=client_token())
        result = await client.chat.completions.create(model="held", messages=message(_unique("async")), stream=stream)
        if not stream:
            return result.choices[0].message.content
        return "".join([c.choices[0].delta.content or "" async for c in result if c.choices])

    assert asyncio.run(call()) == "from a person, asynchronously"
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("confidence,held", [("0.95", False), ("0.5", True)])
def test_a_low_confidence_stream_at_level_2_is_held_and_streams_the_decision(gateway, reviewer, demo, confidence, held):
    if held:
        reviewer.will("doubtful", "approve")
    client = _client(gateway, default_headers={"x-demo-confidence": confidence})
    chunks = list(client.chat.completions.create(model="doubtful", messages=message(_unique("sure?")), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Demo answer") and chunks[-1].choices[0].finish_reason is not None
    reviewer.join()
    assert len(reviewer.decided) == (1 if held else 0)
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_level_4_never_calls_the_model_and_a_human_answers(gateway, reviewer, demo, stream):
    reviewer.will("paused", "override", response="A person answers while the model is paused.")
    result = _client(gateway).chat.completions.create(model="paused", messages=message(_unique("help")), stream=stream)
    text = ("".join(c.choices[0].delta.content or "" for c in result if c.choices) if stream
            else result.choices[0].message.content)
    assert text == "A person answers while the model is paused."
    assert demo.stats()["requests"] == 0
