"""Output quality incidents: reviewers' reasons and the output check, each just above its threshold and not just below.

Driven through the demo model and its moderations endpoint (`/v1/moderations`), which flags
an answer holding one of `gateway.demo.model.FLAGGED_TERMS`; its chat answers quote the prompt.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import auth, eventually, free_port, gateway_factory


@pytest.fixture
def make(tmp_path, demo):
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


def _policy(triggers: dict | None = None, **demo_policy) -> dict:
    return {"triggers": {"evaluate_every": "1h", **(triggers or {})}, "models": {"demo": demo_policy}}


async def _chat(gw, text: str, **headers):
    return await gw.client.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": text}]},
                                headers={**auth("client"), **headers})


async def _triggers(gw) -> list[str]:
    return [i["trigger"] for i in await gw.gateway.monitor.evaluate()]


# reviewers' verdicts carry a reason ----------------------------------------------------------
async def _review_all(gw, verdicts: list[dict]) -> None:
    async def stored():  # sampled tickets are stored in batches, once a second
        found = (await gw.client.get("/review/tickets?kind=sample&limit=500", headers=auth("reviewer"))).json()["tickets"]
        return found if len(found) == len(verdicts) else None

    for ticket, verdict in zip(await eventually(stored), verdicts):
        r = await gw.client.post(f"/review/tickets/{ticket['id']}/decision", json=verdict, headers=auth("reviewer"))
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("wrong, fires", [(4, True), (3, False)])  # of 60: 6.7 % fires, exactly 5 % does not
async def test_reviewers_reasons_over_five_percent_open_an_output_quality_incident(make, wrong, fires):
    async with make(policy={**_policy(), "defaults": {"sample_rate": {0: 1.0}}}) as gw:
        for i in range(60):
            assert (await _chat(gw, f"question {i}")).status_code == 200
        harmful = [{"verdict": "disagree", "reason": "harmful", "note": "insults the user"}] * (wrong - 1)
        verdicts = harmful + [{"verdict": "disagree", "reason": "gibberish"}]
        verdicts += [{"verdict": "disagree", "reason": "biased"}] * 5  # recorded, but not an output-quality reason
        verdicts += [{"verdict": "agree"}] * (60 - len(verdicts))
        await _review_all(gw, verdicts)
        opened = await gw.gateway.monitor.evaluate()
        quality = [i for i in opened if i["trigger"] == "output_quality"]
        assert bool(quality) == fires
        if fires:
            (incident,) = quality
            assert incident["category"] == "performance" and incident["values"]["reviewed"] == 60
            assert incident["values"]["reasons"] == {"harmful": wrong - 1, "gibberish": 1}
            level = (await gw.client.get("/admin/oversight", headers=auth("operator"))).json()["models"]["demo"]["level"]
            assert level == 2


async def test_the_minimum_number_of_reviews_guards_output_quality(make):
    async with make(policy={**_policy(), "defaults": {"sample_rate": {0: 1.0}}}) as gw:
        for i in range(49):  # every one judged gibberish, but 49 < min_samples (50)
            await _chat(gw, f"q {i}")
        await _review_all(gw, [{"verdict": "disagree", "reason": "gibberish"}] * 49)
        assert "output_quality" not in await _triggers(gw)


async def test_a_reason_is_kept_with_the_decision_and_checked(make):
    async with make(policy={**_policy(), "defaults": {"sample_rate": {0: 1.0}}}) as gw:
        await _chat(gw, "one")
        async def one():
            found = (await gw.client.get("/review/tickets?kind=sample", headers=auth("reviewer"))).json()["tickets"]
            return found[0] if found else None

        ticket = await eventually(one)
        url = f"/review/tickets/{ticket['id']}/decision"
        bad = await gw.client.post(url, json={"verdict": "disagree", "reason": "rude"}, headers=auth("reviewer"))
        assert bad.status_code == 400 and "reason" in bad.json()["error"]["message"]
        agree = await gw.client.post(url, json={"verdict": "agree", "reason": "false"}, headers=auth("reviewer"))
        assert agree.status_code == 400  # a reason says why an answer was wrong
        ok = await gw.client.post(url, json={"verdict": "disagree", "reason": "false"}, headers=auth("reviewer"))
        assert ok.status_code == 200 and ok.json()["decision"]["reason"] == "false"
        log = gw.gateway.recorder.log
        records = [log.get(i) for i in range(log.size)]
        assert any(r.get("action") == "review_decision" and r["decision"].get("reason") == "false" for r in records)


# the output check (a moderations endpoint) ------------------------------------------------------
@pytest.mark.parametrize("flagged, fires", [(2, True), (1, False)])  # of 100: 2 % fires, exactly 1 % does not
async def test_the_output_check_flagging_over_one_percent_opens_an_incident(make, demo, flagged, fires):
    async with make(policy=_policy(output_check={"url": demo.url, "model": "llama-guard"})) as gw:
        for i in range(100):
            text = f"say something harmful {i}" if i < flagged else f"say something kind {i}"
            r = await _chat(gw, text)
            assert r.status_code == 200 and r.headers["x-oversight-route"] == "auto"  # off the path: served as usual
        await gw.gateway.output_checks.drain()
        opened = await gw.gateway.monitor.evaluate()
        assert [i["trigger"] for i in opened] == (["output_check"] if fires else [])
        if fires:
            assert opened[0]["values"] == {"share": 0.02, "checked": 100, "flagged": 2, "unchecked": 0}
        assert demo.stats()["by_path"]["/v1/moderations"] == 100


async def test_the_minimum_number_of_checks_guards_the_output_check(make, demo):
    async with make(policy=_policy(output_check={"url": demo.url})) as gw:
        for i in range(99):  # every answer flagged, but 99 < min_samples (100)
            await _chat(gw, f"toxic {i}")
        await gw.gateway.output_checks.drain()
        assert await _triggers(gw) == []


async def test_a_sample_rate_checks_only_some_answers(make, demo):
    async with make(policy=_policy(output_check={"url": demo.url, "sample_rate": 0.25})) as gw:
        for i in range(200):
            await _chat(gw, f"q {i}")
        await gw.gateway.output_checks.drain()
        checked = demo.stats()["by_path"].get("/v1/moderations", 0)
        assert 20 <= checked <= 80  # 50 expected; a binomial(200, 0.25) is outside this once in ~10^8


async def test_an_unreachable_classifier_off_the_path_serves_and_counts_unchecked(make):
    async with make(policy=_policy(output_check={"url": f"http://127.0.0.1:{free_port()}"})) as gw:
        r = await _chat(gw, "harmful words")
        assert r.status_code == 200
        await gw.gateway.output_checks.drain()
        await gw.gateway.monitor.flush()
        counts = await gw.gateway.monitor.counters.quality("demo", "v1", 3600)
        assert counts.get("oc_failed") == 1 and "oc_n" not in counts


async def _level(gw, level: int) -> None:
    r = await gw.client.put("/admin/oversight/models/demo", json={"level": level, "reason": "test"}, headers=auth("operator"))
    assert r.status_code == 200, r.text


async def test_a_blocking_check_holds_a_flagged_answer_at_level_2(make, demo):
    async with make(policy=_policy(output_check={"url": demo.url, "blocking": True})) as gw:
        await _level(gw, 2)
        clean = await _chat(gw, "a kind question", prefer="respond-async")
        assert clean.status_code == 200 and clean.headers["x-oversight-route"] == "auto"  # confident and passed
        held = await _chat(gw, "a violent question", prefer="respond-async")
        assert held.status_code == 202 and held.headers["x-oversight-route"] == "held"
        ticket = (await gw.client.get(f"/review/tickets/{held.json()['ticket']}", headers=auth("reviewer"))).json()
        assert ticket["reason"] == "the output check flagged the answer (violence)"
        assert demo.stats()["by_path"]["/v1/moderations"] == 2  # each checked once, not again off the path
        await gw.gateway.output_checks.drain()
        await gw.gateway.monitor.flush()
        counts = await gw.gateway.monitor.counters.quality("demo", "v1", 3600)
        assert (counts["oc_n"], counts["oc_flagged"]) == (2, 1)


async def test_a_blocking_check_fails_closed_when_the_classifier_is_unreachable(make):
    async with make(policy=_policy(output_check={"url": f"http://127.0.0.1:{free_port()}", "blocking": True})) as gw:
        await _level(gw, 2)
        held = await _chat(gw, "a kind question", prefer="respond-async")
        assert held.status_code == 202 and held.headers["x-oversight-route"] == "held"
        ticket = (await gw.client.get(f"/review/tickets/{held.json()['ticket']}", headers=auth("reviewer"))).json()
        assert "could not be reached" in ticket["reason"]


async def test_a_blocking_check_below_level_2_runs_off_the_path(make, demo):
    async with make(policy=_policy(output_check={"url": demo.url, "blocking": True})) as gw:
        r = await _chat(gw, "harmful")
        assert r.status_code == 200 and r.headers["x-oversight-route"] == "auto"  # level 0 holds nothing
        await gw.gateway.output_checks.drain()
        assert demo.stats()["by_path"]["/v1/moderations"] == 1


async def test_a_streamed_answer_is_checked_from_its_content(make, demo):
    async with make(policy=_policy(output_check={"url": demo.url})) as gw:
        body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "a toxic reply please"}]}
        r = await gw.client.post("/v1/chat/completions", json=body, headers=auth("client"))
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        await gw.gateway.output_checks.drain()
        await gw.gateway.monitor.flush()
        counts = await gw.gateway.monitor.counters.quality("demo", "v1", 3600)
        assert (counts["oc_n"], counts["oc_flagged"]) == (1, 1)


class _SlowGuard(BaseHTTPRequestHandler):
    """A moderations server that takes a second per answer, and flags nothing."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        time.sleep(1.0)
        data = json.dumps({"results": [{"flagged": False, "categories": {}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


async def test_off_the_path_a_slow_classifier_does_not_delay_the_answer(make):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowGuard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with make(policy=_policy(output_check={"url": f"http://127.0.0.1:{server.server_address[1]}"})) as gw:
            started = time.monotonic()
            r = await _chat(gw, "hello")
            assert r.status_code == 200 and time.monotonic() - started < 0.5  # the check takes 1 s, after the answer
            await gw.gateway.output_checks.drain()
            await gw.gateway.monitor.flush()
            counts = await gw.gateway.monitor.counters.quality("demo", "v1", 3600)
            assert (counts["oc_n"], counts.get("oc_flagged", 0)) == (1, 0)
    finally:
        server.shutdown()
