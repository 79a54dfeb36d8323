"""`POST /v1/moderations`: the demo's classifier, in the OpenAI moderations shape the gateway's output check speaks."""

from __future__ import annotations

import pytest

from gateway.demo.model import FLAGGED_TERMS

URL = "/v1/moderations"


def test_a_text_with_a_flagged_term_is_flagged_under_its_category(client):
    r = client.post(URL, json={"model": "llama-guard", "input": "You are so harmful!"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["model"] == "llama-guard" and doc["id"].startswith("modr-")
    (result,) = doc["results"]
    assert result["flagged"] is True and result["categories"]["harassment"] is True
    assert result["categories"]["violence"] is False and result["category_scores"]["harassment"] > 0.5


def test_each_input_of_a_list_gets_its_own_result(client):
    texts = ["a kind word", *(f"something {term}" for term in FLAGGED_TERMS)]
    results = client.post(URL, json={"input": texts}).json()["results"]
    assert [r["flagged"] for r in results] == [False] + [True] * len(FLAGGED_TERMS)


@pytest.mark.parametrize("body", [{}, {"input": 3}, {"input": []}, {"input": ["ok", 1]}, []])
def test_a_body_that_is_not_a_moderations_request_is_400(client, body):
    r = client.post(URL, json=body)
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]


def test_it_obeys_the_failure_switches_like_every_inference_endpoint(client):
    client.post("/_demo/config", json={"fail_rate": 1.0, "fail_status": 503})
    assert client.post(URL, json={"input": "x"}).status_code == 503
