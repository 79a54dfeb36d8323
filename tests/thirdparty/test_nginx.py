"""The gateway in front of nginx, which is in front of the demo model.

nginx is what many model deployments put in front of their inference server, and it does
two things a hand-written test upstream does not: it compresses answers for clients that
accept gzip (`gzip on`, JSON and event streams, whatever their size), and it closes a
client's keep-alive connection after `keepalive_requests` (3 here) requests, with
`Connection: close` on the last answer. The gateway forwards the client's Accept-Encoding,
so what nginx compresses depends on the client; the oversight decision must not.
"""

from __future__ import annotations

import pytest

from tests.support import start_demo
from tests.thirdparty.harness import (LEVELS, Nginx, assert_held, assert_no_status_0, assert_passed_through,
                                      assert_recommendation_is, assert_released, events, gateway_in_front_of,
                                      nginx_binary, stop_gateway, wait_for)

ENCODINGS = ("gzip", "identity")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    nginx_binary()  # fails the module's tests, with how to install it, when nginx is missing
    demo = start_demo("--stream-delay-ms", "5")
    try:
        server = Nginx(tmp_path_factory.mktemp("nginx"), demo.url.split("://", 1)[1]).start()
    except BaseException:
        demo.stop()
        raise
    yield server
    server.stop()
    demo.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, nginx):
    gateway = gateway_in_front_of(tmp_path_factory.mktemp("gw-nginx"), {"nginx": nginx.url})
    yield gateway
    stop_gateway(gateway)


def _predict(gw, nginx, unique, *, level: int, encoding: str, confidence: str, check: bool = True):
    """POST /predict straight to nginx and through the gateway, with the same body and headers."""
    headers = {"accept-encoding": encoding, "x-demo-confidence": confidence}
    body = {"applicant": {"id": unique(), "group": "A"}}
    direct = gw.direct("POST", nginx.url + "/predict", headers=headers, body=body)
    return direct, gw.call("POST", "/models/nginx/predict", level=level, headers=headers, body=body, check=check)


def _chat(gw, nginx, unique, *, level: int, encoding: str, confidence: str = "0.95", check: bool = True):
    headers = {"accept-encoding": encoding, "x-demo-confidence": confidence}
    body = {"model": "nginx", "stream": True, "messages": [{"role": "user", "content": f"tell me about {unique()}"}]}
    direct = gw.direct("POST", nginx.url + "/v1/chat/completions", headers=headers, body=body)
    return direct, gw.call("POST", "/v1/chat/completions", level=level, headers=headers, body=body, check=check)


def test_nginx_compresses_for_clients_that_accept_gzip(gw, nginx, unique):
    """The premise of this module: through this nginx a client that accepts gzip gets gzip, answers and streams."""
    headers = {"accept-encoding": "gzip"}
    answer = gw.direct("POST", nginx.url + "/predict", headers=headers, body={"applicant": {"id": unique()}})
    assert answer.encoding == "gzip" and answer.json()["decision"] in ("approve", "deny")
    plain = gw.direct("POST", nginx.url + "/predict", headers={"accept-encoding": "identity"},
                      body={"applicant": {"id": unique()}})
    assert plain.encoding == "identity" and "decision" in plain.json()
    stream = gw.direct("POST", nginx.url + "/v1/chat/completions", headers=headers,
                       body={"model": "nginx", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert stream.encoding == "gzip" and events(stream.decoded())[-1] == "[DONE]"


@pytest.mark.parametrize("level", LEVELS)
def test_more_requests_than_nginx_keeps_a_connection_for_all_succeed(gw, nginx, unique, level):
    """nginx ends every third request's connection (`Connection: close`); the gateway must open the next one
    itself and every request must still get its answer. The access log shows the connections nginx saw.
    (Uncompressed, so this is about connections only; compression is the subject of the tests below.)"""
    gw.set_level(level)
    rids = set()
    for _ in range(10):
        direct, through = _predict(gw, nginx, unique, level=level, encoding="identity", confidence="0.95")
        if level <= 1:
            assert_passed_through(direct, through, gw, level)
        elif level == 2:
            assert_released(direct, through, gw)
        else:
            assert_recommendation_is(assert_held(through, gw, level), direct)
        rids.add(through.headers["x-request-id"])

    def gateway_lines():
        lines = [line for line in nginx.access_log() if line.rsplit("rid=", 1)[-1] in rids]
        return lines if len(lines) == len(rids) else None

    lines = wait_for(gateway_lines, what="nginx logged each of the gateway's requests")
    per_connection: dict[str, int] = {}
    for line in lines:
        connection, nth = line.split(" ", 2)[:2]
        per_connection[connection] = max(per_connection.get(connection, 0), int(nth))
    assert max(per_connection.values()) <= 3 and len(per_connection) >= 4, per_connection
    assert 3 in per_connection.values(), f"the gateway never reused a connection up to nginx's limit: {per_connection}"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("confidence, expected", [("0.95", "released"), ("0.79", "held")])
def test_level_2_reads_the_confidence_of_a_gzip_answer_as_of_a_plain_one(gw, nginx, unique, encoding, confidence,
                                                                         expected):
    """Level 2 judges the answer by its `/confidence`: the gateway must read it from the decoded JSON, so gzip
    or not, 0.95 is released and 0.79 is held - held because it is 0.79, not because it was unreadable."""
    gw.set_level(2)
    direct, through = _predict(gw, nginx, unique, level=2, encoding=encoding, confidence=confidence)
    assert direct.encoding == encoding
    if expected == "released":
        assert_released(direct, through, gw)
        assert through.json()["confidence"] == 0.95
    else:
        ticket = assert_held(through, gw, 2)
        assert ticket["confidence"] == 0.79, f"held for another reason: {ticket['reason']!r}"
        assert_recommendation_is(ticket, direct)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_level_3_shows_the_reviewer_the_answer_as_text_and_serves_it_once_approved(gw, nginx, unique, encoding):
    """At level 3 the model's answer is a recommendation a person reads: the JSON with its "decision", not base64
    of gzip. Once approved, the client gets that answer in a form its own headers describe."""
    gw.set_level(3)
    direct, through = _predict(gw, nginx, unique, level=3, encoding=encoding, confidence="0.95")
    ticket = assert_held(through, gw, 3)
    assert_recommendation_is(ticket, direct)
    assert "decision" in ticket["recommendation"]["body"]
    assert ticket["confidence"] == 0.95, f"the reviewer is not told the model's confidence: {ticket['reason']!r}"
    decided = gw.approve(ticket["id"])
    assert decided.status == 200 and decided.headers.get("x-decision") == "approve", gw.explain(decided)
    assert decided.json() == direct.json(), gw.explain(decided)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("level", (0, 1))
def test_streams_relay_whole_through_gzip(gw, nginx, unique, level, encoding):
    """A stream nginx compresses event by event reaches the client as one complete gzip stream, every event and
    the closing `[DONE]` in it (the demo model numbers its completions, so ids and timestamps differ per call)."""
    gw.set_level(level)
    direct, through = _chat(gw, nginx, unique, level=level, encoding=encoding)
    assert direct.encoding == encoding
    assert through.status == 200 and through.headers.get("x-oversight-level") == str(level), gw.explain(through)
    assert through.encoding == encoding, gw.explain(through)
    assert through.headers.get("content-type") == direct.headers.get("content-type")
    got = events(through.decoded())
    assert got[-1] == "[DONE]" and got == events(direct.decoded()), gw.explain(through)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("level, confidence, expected", [(2, "0.95", "released"), (2, "0.79", "held"),
                                                          (3, "0.95", "held")])
def test_compressed_streams_are_judged_like_plain_ones(gw, nginx, unique, level, confidence, expected, encoding):
    """At levels 2 and 3 a stream is read whole and judged; its confidence is in its events, gzip or not."""
    gw.set_level(level)
    direct, through = _chat(gw, nginx, unique, level=level, encoding=encoding, confidence=confidence)
    if expected == "released":
        assert through.status == 200 and through.headers.get("x-oversight-route") == "auto", gw.explain(through)
        assert events(through.decoded()) == events(direct.decoded()), gw.explain(through)
        return
    ticket = assert_held(through, gw, level)
    assert ticket["confidence"] == float(confidence), f"held for another reason: {ticket['reason']!r}"
    rec = ticket["recommendation"]
    assert rec["body_encoding"] == "utf-8", f"the reviewer is shown {rec['body_encoding']}: {rec['body'][:60]!r}"
    assert events(rec["body"].encode()) == events(direct.decoded())


def test_metrics_never_count_a_status_0(gw, nginx, unique):
    """Every exchange is counted with the status it ended with; `status="0"` would count an answer never given.
    (Whether each answer was right is for the tests above; here only what the metrics say of them.)"""
    for level in LEVELS:
        gw.set_level(level)
        for encoding in ENCODINGS:
            for send in (_predict, _chat):
                send(gw, nginx, unique, level=level, encoding=encoding, confidence="0.95", check=False)
    assert_no_status_0(gw)
