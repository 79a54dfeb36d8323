"""Control-plane JSON: one parser, strict types, and a refusal that changes nothing.

Every JSON body on the control plane (and the JSON a reviewer types into the console's
override form) is parsed in one place: nested at most 64 deep, no NaN or Infinity,
numbers the store can write, Unicode strings. Body models take no coercions: `true` is
not level 1 and `"3"` is not 3. What is refused is a 400 in the JSON error shape, and
the gateway keeps exactly what it kept before.
"""

from __future__ import annotations

import pytest

from tests.support import auth, console_session, kept_state

APPLICANT = {"applicant": {"id": "sec-1"}}
JSON = {"content-type": "application/json"}


def _deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


async def _held(gw) -> str:
    await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "review all"}, headers=auth("operator"))
    r = await gw.client.post("/models/demo/predict", json=APPLICANT, headers={**auth("client"), "prefer": "respond-async"})
    assert r.status_code == 202, r.text
    return r.json()["ticket"]


async def _ticket(gw, ticket: str) -> dict:
    return (await gw.client.get(f"/review/tickets/{ticket}", headers=auth("reviewer"))).json()


def _refused(r, status: int = 400) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["request_id"] and error["type"]
    return error["message"]


@pytest.mark.parametrize("depth", [65, 300, 100_000])
async def test_deeply_nested_json_is_a_400_on_a_level_change(make_gateway, depth):
    async with make_gateway() as gw:
        before = await kept_state(gw.gateway)
        body = '{"level": ' + _deep(depth) + ', "reason": "deep"}'
        r = await gw.client.put("/admin/oversight/global", content=body, headers={**auth("operator"), **JSON})
        assert _refused(r) == "request body: JSON nested more than 64 levels deep"
        assert await kept_state(gw.gateway) == before


@pytest.mark.parametrize("depth", [100, 300, 100_000])
async def test_a_deeply_nested_override_leaves_the_ticket_pending(make_gateway, depth):
    async with make_gateway() as gw:
        ticket = await _held(gw)
        before = await kept_state(gw.gateway)
        body = '{"action": "override", "response": ' + _deep(depth) + "}"
        r = await gw.client.post(f"/review/tickets/{ticket}/decision", content=body, headers={**auth("reviewer"), **JSON})
        assert "nested more than 64 levels deep" in _refused(r)
        assert await kept_state(gw.gateway) == before
        assert (await _ticket(gw, ticket))["status"] == "pending"
        ok = await gw.client.post(f"/review/tickets/{ticket}/decision", json={"action": "override", "response": {"a": [[1]]}},
                                  headers=auth("reviewer"))
        assert ok.status_code == 200, ok.text  # still decidable


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
async def test_an_override_with_a_non_finite_number_decides_nothing(make_gateway, constant):
    async with make_gateway() as gw:
        ticket = await _held(gw)
        before = await kept_state(gw.gateway)
        body = '{"action": "override", "response": {"score": ' + constant + "}}"
        r = await gw.client.post(f"/review/tickets/{ticket}/decision", content=body, headers={**auth("reviewer"), **JSON})
        assert _refused(r).startswith("request body: ")
        assert await kept_state(gw.gateway) == before and (await _ticket(gw, ticket))["status"] == "pending"


@pytest.mark.parametrize("since", ["NaN", "Infinity", "-Infinity"])
async def test_a_legal_hold_from_nan_is_refused_and_holds_stay_readable(make_gateway, since):
    async with make_gateway() as gw:
        before = await kept_state(gw.gateway)
        body = '{"since": ' + since + ', "reason": "incident 7"}'
        r = await gw.client.post("/admin/evidence/holds", content=body, headers={**auth("operator"), **JSON})
        assert _refused(r) == f"request body: {since} is not a JSON number; send a finite number or null"
        assert await kept_state(gw.gateway) == before
        listed = await gw.client.get("/admin/evidence/holds", headers=auth("operator"))
        assert listed.status_code == 200 and listed.json() == {"holds": before["legal_holds"]}


async def test_a_legal_hold_still_takes_whole_seconds(make_gateway):
    async with make_gateway() as gw:
        r = await gw.client.post("/admin/evidence/holds", json={"since": 1700000000, "until": 1800000000.5, "reason": "x"},
                                 headers=auth("operator"))
        assert r.status_code == 201, r.text
        assert r.json()["since"] == 1700000000.0


@pytest.mark.parametrize("level", [True, False, "3", "4", 3.0, " 2 ", "1", None, [1]])
async def test_a_level_is_a_json_integer_and_nothing_else(make_gateway, level):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/models/demo", json={"level": 3, "reason": "drill"}, headers=auth("operator"))
        before = await kept_state(gw.gateway)
        for path in ("/admin/oversight/models/demo", "/admin/oversight/global"):
            r = await gw.client.put(path, json={"level": level, "reason": "loose"}, headers=auth("operator"))
            assert _refused(r).startswith("level: input should be a valid integer")
        assert await kept_state(gw.gateway) == before  # no level moved, no pending lowering filed
        assert gw.gateway.state.level_for("demo") == 3


@pytest.mark.parametrize("body, problem", [
    ('{"action": "override", "response": {"n": 18446744073709551616}}', "does not fit in 64 bits"),
    ('{"action": "override", "response": {"n": -9223372036854775809}}', "does not fit in 64 bits"),
    ('{"action": "reject", "note": "\\ud800"}', "lone surrogate"),
    ('{"action": "reject", "note": "ok", "\\udfff": 1}', "lone surrogate"),
    ('{"action": "override", "response": {"x": 1}, "status": 200.0}', "status: input should be a valid integer"),
    ('{"action": "override", "response": {"x": 1}, "status": "201"}', "status: input should be a valid integer"),
    ('{"action": "reject", "note": 5}', "note: input should be a valid string"),
])
async def test_a_decision_the_store_could_not_keep_is_refused_before_it_is_taken(make_gateway, body, problem):
    async with make_gateway() as gw:
        ticket = await _held(gw)
        before = await kept_state(gw.gateway)
        r = await gw.client.post(f"/review/tickets/{ticket}/decision", content=body, headers={**auth("reviewer"), **JSON})
        assert problem in _refused(r)
        assert await kept_state(gw.gateway) == before


async def test_feedback_and_kill_take_no_coercions(make_gateway):
    async with make_gateway() as gw:
        before = await kept_state(gw.gateway)
        r = await gw.client.post("/v1/feedback", json={"request_id": "x", "correct": 1}, headers=auth("client"))
        assert r.status_code == 400 and r.json()["error"]["request_id"]  # the OpenAI shape carries it too
        assert "correct: input should be a valid boolean" in r.json()["error"]["message"]
        r = await gw.client.post("/admin/kill", json={"reason": "x", "model": 5}, headers=auth("operator"))
        assert "model: input should be a valid string" in _refused(r)
        assert await kept_state(gw.gateway) == before


# the console's override form: JSON typed by a reviewer ---------------------------------------
@pytest.mark.parametrize("typed, problem", [
    (_deep(100_000), "the override answer: JSON nested more than 64 levels deep"),
    (_deep(300), "the override answer: JSON nested more than 64 levels deep"),
    ('{"score": NaN}', "the override answer: NaN is not a JSON number"),
    ("{not json", "the override answer is not valid JSON"),
])
async def test_the_console_override_form_uses_the_same_parser(make_gateway, typed, problem):
    async with make_gateway() as gw:
        ticket = await _held(gw)
        console = await console_session(gw.client, "reviewer")
        before = await kept_state(gw.gateway)
        r = await gw.client.post(f"/console/review/{ticket}/decide", headers=console,
                                 data={"decision": "override", "response": typed})
        assert _refused(r).startswith(problem)
        assert await kept_state(gw.gateway) == before


async def test_the_console_override_status_must_be_ascii_digits(make_gateway):
    async with make_gateway() as gw:
        ticket = await _held(gw)
        console = await console_session(gw.client, "reviewer")
        r = await gw.client.post(f"/console/review/{ticket}/decide", headers=console,
                                 data={"decision": "override", "response": "{}", "status": "²"})
        assert _refused(r) == "the override status must be a number (got '²')"


async def test_a_ticket_whose_request_is_deeply_nested_still_renders(make_gateway):
    async with make_gateway() as gw:
        await gw.client.put("/admin/oversight/models/demo", json={"level": 4, "reason": "paused"}, headers=auth("operator"))
        r = await gw.client.post("/models/demo/predict", content=_deep(50_000), headers={**auth("client"), **JSON,
                                                                                         "prefer": "respond-async"})
        assert r.status_code == 202, r.text
        console = await console_session(gw.client, "reviewer")
        page = await gw.client.get(f"/console/review/{r.json()['ticket']}", headers={**console, "accept": "text/html"})
        assert page.status_code == 200 and "[[[[" in page.text  # shown as the text it is
