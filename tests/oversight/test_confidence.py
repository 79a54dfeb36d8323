"""Level 2: hold below the confidence threshold, release at or above it, for every source."""

from __future__ import annotations

import math

import pytest

from gateway.oversight.confidence import logprob_confidence, meets, read_confidence, resolve_pointer
from gateway.policy import ConfidenceSource
from tests.support import auth, gateway_factory

SOURCES = {
    "pointer": {"source": "json_pointer", "pointer": "/confidence"},
    "header": {"source": "header", "header": "X-Model-Confidence"},
    "logprobs": {"source": "logprobs"},
}


@pytest.fixture
async def gw(tmp_path, demo):
    make = gateway_factory(tmp_path, {name: {"v1": demo.url} for name in SOURCES})
    policy = {"models": {name: {"confidence": source} for name, source in SOURCES.items()}}
    async with make(policy=policy) as running:
        for name in SOURCES:
            r = await running.client.put(f"/admin/oversight/models/{name}", json={"level": 2, "reason": "confidence test"},
                                         headers=auth("operator"))
            assert r.status_code == 200
        yield running


async def _ask(gw, model: str, confidence: str, stream: bool = False):
    headers = {**auth("client"), "x-demo-confidence": confidence}
    if model == "logprobs":  # an OpenAI client that knows the gateway: a held answer is a 202 at once
        headers["prefer"] = "respond-async"
        body = {"model": model, "logprobs": True, "stream": stream, "messages": [{"role": "user", "content": "is it?"}]}
        return await gw.client.post("/v1/chat/completions", json=body, headers=headers)
    return await gw.client.post(f"/models/{model}/predict", json={"applicant": {"id": "c-1"}}, headers=headers)


@pytest.mark.parametrize("model", list(SOURCES))
async def test_exactly_at_the_threshold_is_released_just_below_is_held(gw, model):
    released = await _ask(gw, model, "0.80")
    assert released.status_code == 200, released.text
    assert released.headers["x-oversight-route"] in ("auto", "sampled")
    held = await _ask(gw, model, "0.79")
    assert held.status_code == 202
    assert held.headers["x-oversight-route"] == "held"
    assert "0.79 is below the threshold 0.8" in held.json()["reason"]
    ticket = (await gw.client.get(f"/review/tickets/{held.json()['ticket']}", headers=auth("reviewer"))).json()
    assert ticket["confidence"] == pytest.approx(0.79)


async def test_a_buffered_stream_is_judged_whole_and_released_whole(gw):
    released = await _ask(gw, "logprobs", "0.95", stream=True)
    assert released.status_code == 200
    assert released.text.rstrip().endswith("data: [DONE]")
    held = await _ask(gw, "logprobs", "0.5", stream=True)
    assert held.status_code == 202


async def test_a_missing_confidence_is_held(gw):
    body = {"model": "logprobs", "messages": [{"role": "user", "content": "hi"}]}
    r = await gw.client.post("/v1/chat/completions", json=body, headers={**auth("client"), "prefer": "respond-async"})
    assert r.status_code == 202  # no logprobs asked for, so none to read
    assert "missing or unreadable" in r.json()["reason"]


# the readers, as plain functions -------------------------------------------------
def test_json_pointers_follow_rfc_6901():
    doc = {"a/b": {"m~n": [0, {"c": 0.5}]}}
    assert resolve_pointer(doc, "/a~1b/m~0n/1/c") == 0.5
    assert resolve_pointer(doc, "") is doc


@pytest.mark.parametrize("body", [b"not json", b'{"confidence": "high"}', b'{"confidence": 1.5}', b'{"confidence": -0.1}',
                                  b'{"confidence": true}', b'{"other": 1}', b'{"confidence": NaN}'])
def test_unreadable_confidences_are_none(body):
    assert read_confidence(ConfidenceSource(source="json_pointer", pointer="/confidence"), [], body) is None


def test_logprobs_give_the_geometric_mean_of_token_probabilities():
    probs = [0.9, 0.5, 0.8]
    content = [{"token": str(i), "logprob": math.log(p)} for i, p in enumerate(probs)]
    body = ('{"choices": [{"logprobs": {"content": %s}}]}' % str(content).replace("'", '"')).encode()
    assert logprob_confidence(body) == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))


def test_the_threshold_comparison_tolerates_float_noise():
    assert meets(math.exp(math.log(0.8)), 0.8)
    assert meets(0.8, 0.8) and not meets(0.79999, 0.8) and not meets(None, 0.8)
