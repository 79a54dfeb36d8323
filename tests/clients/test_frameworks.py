"""Frameworks on the OpenAI API, unmodified: LangChain's `ChatOpenAI` and LiteLLM's `completion()` as clients.

Each one, pointed at the gateway at level 3: an approval gives the model's answer, an
override the reviewer's, a rejection raises with the reviewer's note, no decision in time
raises naming the ticket (and the ticket stays decidable). Streams too.
"""

from __future__ import annotations

import time
import uuid

import litellm
import pytest
from langchain_openai import ChatOpenAI

from tests.clients.conftest import client_token


def _unique(text: str) -> str:
    return f"{text} ({uuid.uuid4().hex[:8]})"


def _chat(gateway, model: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=gateway.v1, api_key=client_token(), model=model, max_retries=2)


def _litellm(gateway, model: str, text: str, stream: bool = False) -> str:
    result = litellm.completion(model=f"openai/{model}", api_base=gateway.v1, api_key=client_token(),
                                messages=[{"role": "user", "content": text}], stream=stream)
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in result)
    return result.choices[0].message.content


# LangChain -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_gets_the_models_answer_on_approval(gateway, reviewer, demo, stream):
    reviewer.will("held", "approve")
    ask = _unique("hello")
    text = ("".join(chunk.content for chunk in _chat(gateway, "held").stream(ask)) if stream
            else _chat(gateway, "held").invoke(ask).content)
    assert text.startswith("Demo answer") and ask in text
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_gets_the_reviewers_answer_on_override(gateway, reviewer, demo, stream):
    reviewer.will("held", "override", response="A person checked this.")
    chat = _chat(gateway, "held")
    text = "".join(c.content for c in chat.stream(_unique("q"))) if stream else chat.invoke(_unique("q")).content
    assert text == "A person checked this."
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_raises_with_the_reviewers_note_on_rejection(gateway, reviewer, demo, stream):
    reviewer.will("held", "reject", note="not without a second document")
    chat = _chat(gateway, "held")
    with pytest.raises(Exception) as raised:
        if stream:
            list(chat.stream(_unique("q")))
        else:
            chat.invoke(_unique("q"))
    assert "not without a second document" in str(raised.value)
    assert demo.stats()["requests"] == 1


def test_langchain_raises_naming_the_ticket_when_no_decision_comes(gateway, demo):
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        _chat(gateway, "impatient").invoke(_unique("q"))
    assert time.monotonic() - started < 5  # 1 s of waiting, not retried
    ticket = raised.value.body["ticket"]
    assert ticket in str(raised.value) and gateway.get(f"/v1/decisions/{ticket}", "client").status_code == 202
    assert gateway.post(f"/review/tickets/{ticket}/decision", {"action": "approve"}, "reviewer").status_code == 200
    assert gateway.get(f"/v1/decisions/{ticket}", "client").json()["choices"][0]["message"]["content"].startswith("Demo")
    assert demo.stats()["requests"] == 1


# LiteLLM ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_litellm_gets_the_models_answer_on_approval(gateway, reviewer, demo, stream):
    reviewer.will("held", "approve")
    ask = _unique("hello")
    text = _litellm(gateway, "held", ask, stream)
    assert text.startswith("Demo answer") and ask in text
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_litellm_gets_the_reviewers_answer_on_override(gateway, reviewer, demo, stream):
    reviewer.will("held", "override", response="Checked by a person.")
    assert _litellm(gateway, "held", _unique("q"), stream) == "Checked by a person."
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_litellm_raises_with_the_reviewers_note_on_rejection(gateway, reviewer, demo, stream):
    reviewer.will("held", "reject", note="outside the lending policy")
    with pytest.raises(Exception) as raised:
        _litellm(gateway, "held", _unique("q"), stream)
    assert "outside the lending policy" in str(raised.value)
    assert demo.stats()["requests"] == 1


def test_litellm_raises_naming_the_ticket_when_no_decision_comes(gateway, demo):
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        _litellm(gateway, "impatient", _unique("q"))
    assert time.monotonic() - started < 5
    text = str(raised.value)
    ticket = text[text.index("tk_"):].split()[0].rstrip(")")
    assert gateway.get(f"/v1/decisions/{ticket}", "client").status_code == 202
    assert gateway.post(f"/review/tickets/{ticket}/decision", {"action": "reject"}, "reviewer").status_code == 200
    assert gateway.get(f"/v1/decisions/{ticket}", "client").status_code == 403
    assert demo.stats()["requests"] == 1


# level 2: a low-confidence stream is held, then streamed as decided ----------------------------------------
def test_langchain_streams_a_held_low_confidence_answer_once_approved(gateway, reviewer, demo):
    reviewer.will("doubtful", "approve")
    chat = ChatOpenAI(base_url=gateway.v1, api_key=client_token(), model="doubtful", default_headers={"x-demo-confidence": "0.4"})
    text = "".join(chunk.content for chunk in chat.stream(_unique("unsure")))
    reviewer.join()
    assert text.startswith("Demo answer") and len(reviewer.decided) == 1
    assert demo.stats()["requests"] == 1


def test_litellm_streams_a_held_low_confidence_answer_once_approved(gateway, reviewer, demo):
    reviewer.will("doubtful", "approve")
    result = litellm.completion(model="openai/doubtful", api_base=gateway.v1, api_key=client_token(), stream=True,
                                messages=[{"role": "user", "content": _unique("unsure")}],
                                extra_headers={"x-demo-confidence": "0.4"})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in result)
    reviewer.join()
    assert text.startswith("Demo answer") and len(reviewer.decided) == 1
    assert demo.stats()["requests"] == 1
