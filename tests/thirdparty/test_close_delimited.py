"""Answers that end when the server closes the connection (tests/thirdparty/close_server.py).

An answer with neither Content-Length nor chunked framing is complete when the connection
closes (RFC 9112 section 6.3): an HTTP/1.0 server, an HTTP/1.1 server that says
`Connection: close`, an SSE endpoint that just stops. For such an answer the close is not
an error, it is the end; the client must get the whole body, at every level, and the
connection must not go back to the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.rawhttp import raw_request
from tests.thirdparty.harness import (LEVELS, assert_held, assert_no_status_0, assert_passed_through,
                                      assert_recommendation_is, assert_released, events, gateway_in_front_of,
                                      python_server, stop_gateway)


@dataclass(frozen=True)
class Route:
    path: str  # on the server
    via: str  # through the gateway
    openai: bool = False

    def body(self, token: str) -> dict:
        if self.openai:
            return {"model": "raw", "stream": True, "messages": [{"role": "user", "content": token}]}
        return {"applicant": {"id": token}}


ROUTES = {
    "http-1.0": Route("/http10", "/models/raw/http10"),
    "http-1.1-connection-close": Route("/close", "/models/raw/close"),
    "sse-until-close": Route("/sse", "/models/raw/sse"),
    "openai-sse-until-close": Route("/v1/chat/completions", "/v1/chat/completions", openai=True),
}
CONFIDENCES = ("0.95", "0.79")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = python_server("tests.thirdparty.close_server", tmp_path_factory.mktemp("close-server"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, server):
    gateway = gateway_in_front_of(tmp_path_factory.mktemp("gw-close"), {"raw": server.url})
    yield gateway
    stop_gateway(gateway)


def _both(gw, server, route: Route, token: str, *, level: int, confidence: str, check: bool = True):
    headers = {"x-confidence": confidence, "accept-encoding": "identity"}
    direct = gw.direct("POST", server.url + route.path, headers=headers, body=route.body(token))
    return direct, gw.call("POST", route.via, level=level, headers=headers, body=route.body(token), check=check)


@pytest.mark.parametrize("name", ROUTES)
def test_the_server_frames_its_answers_by_closing(server, name):
    """The premise: no Content-Length, no chunked framing; the body ends where the connection does."""
    path = ROUTES[name].path.encode()
    answer = raw_request(server.port, b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower(), head
    assert head.startswith(b"HTTP/1.0 200" if name == "http-1.0" else b"HTTP/1.1 200"), head
    assert body.endswith(b"}" if b"sse" not in path and b"chat" not in path else b"\n\n") and len(body) > 1000


@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("level", (0, 1))
def test_the_whole_body_passes_through_at_levels_0_and_1(gw, server, unique, level, name, confidence):
    """The close ends the answer; the client gets every byte, framed so it can tell the answer is complete."""
    gw.set_level(level)
    direct, through = _both(gw, server, ROUTES[name], unique(), level=level, confidence=confidence)
    assert_passed_through(direct, through, gw, level)


@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("level", (2, 3))
def test_the_whole_body_is_judged_at_levels_2_and_3(gw, server, unique, level, name, confidence):
    """Read to the close, the answer is judged whole: at level 2 released at 0.95 and held at 0.79, at level 3
    held; what is released, or shown to the reviewer, is the complete body."""
    route = ROUTES[name]
    gw.set_level(level)
    direct, through = _both(gw, server, route, unique(), level=level, confidence=confidence)
    if level == 2 and confidence == "0.95":
        assert_released(direct, through, gw)
        if route.openai or "sse" in name:
            assert events(through.decoded())[-1] == events(direct.decoded())[-1]
        return
    ticket = assert_held(through, gw, level)
    assert ticket["confidence"] == float(confidence), f"held for another reason: {ticket['reason']!r}"
    assert_recommendation_is(ticket, direct)


def test_a_closed_connection_is_not_reused(gw, server, unique):
    """After an answer that ended by closing, the next request goes out on a fresh connection and succeeds."""
    gw.set_level(0)
    for _ in range(5):
        for name in ("http-1.0", "http-1.1-connection-close"):
            direct, through = _both(gw, server, ROUTES[name], unique(), level=0, confidence="0.95")
            assert_passed_through(direct, through, gw, 0)


def test_metrics_never_count_a_status_0(gw, server, unique):
    """After every kind of answer at every level, no exchange is counted with status 0 (an answer never given)."""
    for level in LEVELS:
        gw.set_level(level)
        for route in ROUTES.values():
            _both(gw, server, route, unique(), level=level, confidence="0.95", check=False)
    assert_no_status_0(gw)
