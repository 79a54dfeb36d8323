"""OpenAI-style chat completions: plain, logprobs, confidence, streaming."""

from __future__ import annotations

import json
import math
import time

import pytest

CHAT = "/v1/chat/completions"


def _chat(prompt: str, **extra) -> dict:
    return {"model": "anything", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}], **extra}


def _events(response) -> list[tuple[float, str]]:
    """(arrival time, data) for each SSE event of a streamed response."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            out.append((time.monotonic(), line[len("data: "):]))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


def test_chat_answer_is_openai_shaped_and_deterministic(client):
    r = client.post(CHAT, json=_chat("What is the capital of France?"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "demo-test"  # the --name, not the requested model
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "What is the capital of France?" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["confidence"] == 0.92
    assert r.headers["x-model-confidence"] == "0.92"

    again = client.post(CHAT, json=_chat("What is the capital of France?")).json()
    other = client.post(CHAT, json=_chat("What is the capital of Spain?")).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    assert other["choices"][0]["message"]["content"] != choice["message"]["content"]


def test_reply_answers_the_last_user_message(client):
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    content = client.post(CHAT, json={"messages": messages}).json()["choices"][0]["message"]["content"]
    assert "second question" in content and "first question" not in content


def test_max_tokens_truncates_with_finish_reason_length(client):
    body = client.post(CHAT, json=_chat("a fairly long question with many words in it", max_tokens=3)).json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("forced", [None, "0.79", "0.5", "1"])
def test_logprobs_geometric_mean_is_the_confidence(client, forced):
    headers = {"X-Demo-Confidence": forced} if forced else {}
    r = client.post(CHAT, json=_chat("How sure are you?", logprobs=True), headers=headers)
    assert r.status_code == 200
    body = r.json()
    expected = float(forced) if forced else 0.92
    assert body["confidence"] == expected
    assert float(r.headers["x-model-confidence"]) == expected
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"] > 1
    assert "".join(e["token"] for e in entries) == body["choices"][0]["message"]["content"]
    for e in entries:
        assert e["bytes"] == list(e["token"].encode())
        assert e["top_logprobs"] == []
    geometric_mean = math.exp(sum(e["logprob"] for e in entries) / len(entries))
    assert abs(geometric_mean - expected) < 1e-9


@pytest.mark.parametrize("bad", ["1.5", "0", "-0.2", "nan", "high"])
def test_bad_forced_confidence_is_400(client, bad):
    r = client.post(CHAT, json=_chat("hi"), headers={"X-Demo-Confidence": bad})
    assert r.status_code == 400
    assert "X-Demo-Confidence" in r.json()["error"]["message"]


def test_streaming_sends_one_event_per_token_spaced_in_time(client):
    assert client.post("/_demo/config", json={"stream_delay_ms": 40}).status_code == 200
    plain = client.post(CHAT, json=_chat("Tell me a story", logprobs=True), headers={"X-Demo-Confidence": "0.6"}).json()
    tokens = [e["token"] for e in plain["choices"][0]["logprobs"]["content"]]

    started = time.monotonic()
    payload = _chat("Tell me a story", stream=True, logprobs=True, stream_options={"include_usage": True})
    with client.stream("POST", CHAT, json=payload, headers={"X-Demo-Confidence": "0.6"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-model-confidence"] == "0.6"
        events = _events(r)

    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    token_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content") is not None]
    assert [c["choices"][0]["delta"]["content"] for c in token_chunks] == tokens
    assert token_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == "demo-test" and c["confidence"] == 0.6
    for c in token_chunks:
        (entry,) = c["choices"][0]["logprobs"]["content"]
        assert abs(math.exp(entry["logprob"]) - 0.6) < 1e-12
    assert chunks[len(token_chunks)]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(tokens)

    # Events really arrive over time, 40 ms apart: the first long before the last.
    first, last = events[0][0], events[-1][0]
    assert first - started < 0.5
    assert last - first >= 0.8 * 0.040 * (len(events) - 1)
    gaps = [b[0] - a[0] for a, b in zip(events, events[1:])]
    assert min(gaps) > 0.02


def test_streaming_without_delay_is_complete(client):
    assert client.post("/_demo/config", json={"stream_delay_ms": 0}).status_code == 200
    with client.stream("POST", CHAT, json=_chat("quick", stream=True)) as r:
        events = _events(r)
    assert events[-1][1] == "[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for _, d in events[:-1])
    assert text == client.post(CHAT, json=_chat("quick")).json()["choices"][0]["message"]["content"]


def test_bad_chat_requests_are_400_json(client):
    for body in [b"{not json", b"[1, 2]", b'{"messages": []}', b'{"messages": "hi"}', b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}']:
        r = client.post(CHAT, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        assert r.json()["error"]["code"] == 400


def test_models_lists_the_model(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["demo-test"]
