"""Model names: public names with "/", aliases for what an upstream serves, the model list, multipart routing.

The upstream is the demo model started as vLLM behaves: it answers only for the name it
serves (`meta-llama/Llama-3.1-8B-Instruct`) and 404s any other. Clients are the openai
SDK, unchanged.
"""

from __future__ import annotations

import io

import openai
import pytest

from tests.proxy.echo import EchoUpstream
from tests.support import TOKENS, auth, serve_in_process, start_demo, write_config

SERVED = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def vllm_like():
    model = start_demo("--name", SERVED, "--strict-name", "--stream-delay-ms", "1")
    yield model
    model.stop()


@pytest.fixture
async def echo():
    upstream = await EchoUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def gw(tmp_path, vllm_like, echo):
    models = {
        "llama-8b": {"v1": {"upstream": vllm_like.url, "served_name": SERVED}},  # an alias
        SERVED: {"v1": vllm_like.url},  # the served name itself, "/" and all
        "unmapped": {"v1": vllm_like.url},  # no alias: the upstream does not know this name
        "whisper": {"v1": {"upstream": echo.url, "served_name": "openai/whisper-large-v3"}},
    }
    async with serve_in_process(write_config(tmp_path, models, policy={"oversight": {"two_person_lowering": False}})) as g:
        yield g


def _client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=TOKENS["client"], max_retries=0)


async def test_an_alias_reaches_the_served_name_and_answers_under_the_alias(gw):
    client = _client(gw)
    completion = await client.chat.completions.create(model="llama-8b", messages=[{"role": "user", "content": "hi"}])
    assert completion.model == "llama-8b" and completion.choices[0].message.content
    chunks = [c async for c in await client.chat.completions.create(
        model="llama-8b", messages=[{"role": "user", "content": "tell me more"}], stream=True)]
    assert len(chunks) > 2 and {c.model for c in chunks} == {"llama-8b"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    await client.close()


async def test_a_name_with_a_slash_is_a_model_name(gw):
    client = _client(gw)
    completion = await client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hi"}])
    assert completion.model == SERVED
    r = await gw.client.put(f"/admin/oversight/models/{SERVED.replace('/', '%2F')}", json={"level": 1, "reason": "slash"},
                            headers=auth("operator"))
    assert r.status_code == 200 and r.json()["model"] == SERVED, r.text
    generic = await gw.client.post(f"/models/{SERVED}/v1/chat/completions", headers=auth("client"),
                                   json={"model": SERVED, "messages": [{"role": "user", "content": "hi"}]})
    assert generic.status_code == 200 and generic.headers["x-oversight-level"] == "1"
    await client.close()


async def test_without_an_alias_the_upstream_refuses_the_public_name(gw):
    client = _client(gw)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.chat.completions.create(model="unmapped", messages=[{"role": "user", "content": "hi"}])
    await client.close()


async def test_the_model_list_says_each_models_level_and_active_version(gw):
    await gw.client.put("/admin/oversight/models/llama-8b", json={"level": 2, "reason": "new model"}, headers=auth("operator"))
    client = _client(gw)
    listed = {m.id: m for m in (await client.models.list()).data}
    assert set(listed) == {"llama-8b", SERVED, "unmapped", "whisper"}
    assert (listed["llama-8b"].oversight_level, listed["llama-8b"].active_version) == (2, "v1")
    one = await client.models.retrieve(SERVED)
    assert (one.id, one.oversight_level, one.active_version) == (SERVED, 0, "v1")
    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"
    await client.close()


async def test_a_multipart_request_is_routed_by_its_model_field_and_renamed(gw, echo):
    client = _client(gw)
    audio = io.BytesIO(b"RIFF" + b"\x00" * 20_000)
    audio.name = "question.wav"
    raw = await client.audio.transcriptions.with_raw_response.create(model="whisper", file=audio, language="en")
    assert raw.http_response.status_code == 200 and raw.headers["x-model-version"] == "v1"
    (seen,) = echo.requests
    assert seen.path == "/v1/audio/transcriptions"
    assert b'name="model"\r\n\r\nopenai/whisper-large-v3\r\n' in seen.body and b"\x00" * 20_000 in seen.body
    assert b'name="language"\r\n\r\nen\r\n' in seen.body
    await client.close()


def _split_stream(head: bytes) -> list:
    """An SSE stream whose served name is cut across TCP writes, mid-name."""
    events = b"".join(b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"%s","choices":'
                      b'[{"index":0,"delta":{"content":"w%d "},"finish_reason":null}]}\n\n' % (SERVED.encode(), i)
                      for i in range(3)) + b"data: [DONE]\n\n"
    cut = [0, 70, 75, 200, 260, len(events)]
    pieces: list = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
    for a, b in zip(cut, cut[1:]):
        pieces += [b"%x\r\n%s\r\n" % (b - a, events[a:b]), 0.01]
    return pieces + [b"0\r\n\r\n"]


async def test_a_served_name_cut_across_reads_is_still_renamed(tmp_path):
    from tests.rawhttp import RawUpstream

    upstream = await RawUpstream(_split_stream).start()
    config = write_config(tmp_path, {"llama-8b": {"v1": {"upstream": upstream.url, "served_name": SERVED}}})
    async with serve_in_process(config) as gw:
        client = _client(gw)
        chunks = [c async for c in await client.chat.completions.create(
            model="llama-8b", messages=[{"role": "user", "content": "hi"}], stream=True)]
        assert [c.model for c in chunks] == ["llama-8b"] * 3
        assert "".join(c.choices[0].delta.content for c in chunks) == "w0 w1 w2 "
        assert b"accept-encoding: identity" in upstream.received[0].lower()
        assert b'"model":"meta-llama/Llama-3.1-8B-Instruct"' in upstream.received[0]
        await client.close()
    await upstream.stop()
