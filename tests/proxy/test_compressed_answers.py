"""Compressed answers: oversight reads the content, the client gets the bytes it negotiated.

The upstream compresses with whatever coding the request's path names (as a server does
after `Accept-Encoding`). At level 2 the decision on a compressed answer is the decision
on the same answer uncompressed; the reviewer's copy, samples and evidence hold the
decoded text and say what was decoded; an answer that cannot be decoded is held.
"""

from __future__ import annotations

import gzip
import zlib

import brotli
import httpx
import openai
import pytest
import zstandard

from tests.rawhttp import RawUpstream
from tests.support import auth, eventually, serve_in_process, write_config

CODINGS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


def answer_text(confidence: str) -> bytes:
    return b'{"confidence": %s, "decision": "approve", "choices": [{"message": {"role": "assistant", "content": "ok"}}]}' % (
        confidence.encode())


def encoded(coding: str, confidence: str) -> bytes:
    if coding == "corrupt":
        return gzip.compress(answer_text(confidence))[:-12] + b"\x00" * 12
    if coding == "bomb":
        return gzip.compress(b'{"confidence": 0.95, "pad": "' + b" " * (64 << 20) + b'"}')
    return CODINGS[coding](answer_text(confidence))


def _script(head: bytes):
    """GET /<coding>/<confidence>: that answer, encoded that way."""
    target = head.split(b" ", 2)[1].decode()
    if target.endswith("/chat/completions"):  # the OpenAI route: the client's header says which answer
        coding, confidence = "gzip", "0.95" if b"x-test-answer: confident" in head else "0.79"
    else:
        coding, confidence = target.strip("/").split("/")[-2:]
    body = encoded(coding, confidence)
    wire = {"corrupt": "gzip", "bomb": "gzip"}.get(coding, coding)
    codings = b"" if wire == "identity" else b"content-encoding: %s\r\n" % wire.encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + codings
            + b"content-length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
async def upstream():
    server = await RawUpstream(_script).start()
    yield server
    await server.stop()


def _config(tmp_path, upstream, **policy):
    base = {"oversight": {"two_person_lowering": False}, "defaults": {"sample_rate": {0: 0.0, 1: 0.0}, **policy}}
    return write_config(tmp_path, {"m": {"v1": upstream.url}}, policy=base)


@pytest.fixture
async def gw(tmp_path, upstream):
    async with serve_in_process(_config(tmp_path, upstream)) as running:
        yield running


async def _level(gw, level: int) -> None:
    r = await gw.client.put("/admin/oversight/models/m", json={"level": level, "reason": "compression"}, headers=auth("operator"))
    assert r.status_code == 200, r.text


async def _raw_get(gw, path: str) -> tuple[httpx.Response, bytes]:
    """The answer and its body exactly as sent (not decoded by the client)."""
    request = gw.client.build_request("GET", path, headers={**auth("client"), "accept-encoding": "gzip, deflate, br, zstd"})
    response = await gw.client.send(request, stream=True)
    body = b"".join([piece async for piece in response.aiter_raw()])
    await response.aclose()
    return response, body


async def _ticket(gw, ticket_id: str) -> dict:
    return (await gw.client.get(f"/review/tickets/{ticket_id}", headers=auth("reviewer"))).json()


@pytest.mark.parametrize("coding", list(CODINGS))
async def test_at_level_2_a_compressed_answer_is_judged_by_its_content(gw, coding):
    await _level(gw, 2)
    served, body = await _raw_get(gw, f"/models/m/{coding}/0.95")
    assert served.status_code == 200 and served.headers["x-oversight-route"] == "auto"
    assert body == encoded(coding, "0.95")  # the bytes the upstream sent, in the coding the client asked for
    assert served.headers.get("content-encoding", "identity") == coding

    held, _ = await _raw_get(gw, f"/models/m/{coding}/0.79")
    assert held.status_code == 202
    ticket = await _ticket(gw, held.headers["location"].rsplit("/", 1)[-1])
    assert ticket["reason"].startswith("confidence 0.79 is below the threshold 0.8"), ticket["reason"]
    recommendation = ticket["recommendation"]
    assert recommendation["body"] == answer_text("0.79").decode()  # the reviewer reads text, not base64 of gzip
    assert "content-encoding" not in {name.lower() for name, _ in recommendation["headers"]}


async def test_an_approved_compressed_answer_reaches_the_client_decoded(gw):
    await _level(gw, 3)
    held = await gw.client.get("/models/m/br/0.95", headers=auth("client"))
    ticket = held.json()["ticket"]
    await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "approve"}, headers=auth("reviewer"))
    final = await gw.client.get(held.headers["location"], headers={**auth("client"), "accept-encoding": "identity"})
    assert final.status_code == 200 and final.content == answer_text("0.95")
    assert "content-encoding" not in final.headers


@pytest.mark.parametrize("coding, problem", [("corrupt", "cannot be decoded"), ("bomb", "decodes to more than")])
async def test_an_answer_that_cannot_be_decoded_is_held_and_kept_as_sent(gw, coding, problem):
    await _level(gw, 2)
    held, _ = await _raw_get(gw, f"/models/m/{coding}/0.95")
    assert held.status_code == 202
    ticket_id = held.headers["location"].rsplit("/", 1)[-1]
    ticket = await _ticket(gw, ticket_id)
    assert problem in ticket["reason"], ticket["reason"]
    if coding == "corrupt":  # an approval delivers exactly what the model sent, coding and all
        await gw.client.post(f"/review/tickets/{ticket_id}/decision", json={"action": "approve"}, headers=auth("reviewer"))
        final, body = await _raw_get(gw, held.headers["location"])
        assert body == encoded("corrupt", "0.95") and final.headers["content-encoding"] == "gzip"


async def test_evidence_and_samples_hold_the_decoded_content_and_say_what_was_decoded(tmp_path, upstream):
    async with serve_in_process(_config(tmp_path, upstream, sample_rate={0: 0.0, 1: 1.0})) as gw:
        await _level(gw, 1)
        served, body = await _raw_get(gw, "/models/m/zstd/0.9")
        assert served.status_code == 200 and body == encoded("zstd", "0.9")
        rid = served.headers["x-request-id"]
        entries = (await gw.client.get(f"/admin/evidence/{rid}", headers=auth("auditor"))).json()["records"]
        (entry,) = [e for e in entries if e["record"]["kind"] == "decision"]
        assert entry["record"]["response"]["decoded_from"] == "zstd"
        assert entry["record"]["bodies"]["response"]["body"] == answer_text("0.9").decode()

        async def sampled():
            listed = (await gw.client.get("/review/tickets?kind=sample", headers=auth("reviewer"))).json()["tickets"]
            return [t for t in listed if t["request_id"] == rid]

        (sample,) = await eventually(sampled)  # samples are stored in batches
        assert (await _ticket(gw, sample["id"]))["recommendation"]["body"] == answer_text("0.9").decode()


async def test_the_openai_sdk_asking_for_gzip_gets_oversight_on_the_content(tmp_path, upstream):
    config = _config(tmp_path, upstream, hold_wait={"openai": "1s", "generic": "0s"})
    async with serve_in_process(config) as gw:
        await _level(gw, 2)
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=auth("client")["authorization"].split()[1],
                                    max_retries=0)
        released = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hello"}], extra_headers={"x-test-answer": "confident"})
        assert released.headers["content-encoding"] == "gzip"  # the SDK asked for it, and got it
        assert released.headers["x-oversight-route"] == "auto"
        assert released.parse().choices[0].message.content == "ok"
        with pytest.raises(openai.APIStatusError) as held:  # 0.79: held; no human within hold_wait
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert held.value.status_code == 423 and "held for human review" in held.value.message
        await client.close()
