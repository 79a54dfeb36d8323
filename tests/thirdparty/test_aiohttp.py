"""The gateway in front of an aiohttp.web server (tests/thirdparty/aiohttp_server.py) in its own process.

aiohttp writes HTTP its own way: compressed answers re-framed (gzip or deflate, the
length rewritten, or chunked for a stream), StreamResponse streams in chunks, a 204 and a
304 with the fields aiohttp gives them, a 5 MB body in many reads. Every answer is a pure
function of the request, so at levels 0 and 1 the bytes through the gateway must equal the
bytes straight from aiohttp; at levels 2 and 3 the decision must be the same whatever the
compression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tests.thirdparty.harness import (LEVELS, assert_held, assert_no_status_0, assert_passed_through,
                                      assert_recommendation_is, assert_released, gateway_in_front_of, python_server,
                                      require_aiohttp, stop_gateway)

ENCODINGS = ("gzip", "deflate", "identity")
ETAG = '"model-card-v1"'  # aiohttp_server.ETAG (not imported: this module must load, and fail, without aiohttp)


@dataclass(frozen=True)
class Case:
    """One kind of answer: how to ask for it (straight at `path`, through the gateway at `via`) and, at level 2,
    whether it is released (a confidence >= 0.80 in its JSON) or held (below it, or none: a 204, a 304)."""

    method: str
    path: str
    via: str
    level_2: str
    headers: dict[str, str]
    body: Callable[[str], Any] | None = None  # the request body, from a unique token
    query: bool = False  # the unique token goes in the query (a GET has no body)

    def request(self, token: str) -> tuple[str, Any]:
        suffix = f"?n={token}" if self.query else ""
        return suffix, self.body(token) if self.body else None


CASES = {
    "predict-confident": Case("POST", "/predict", "/models/aio/predict", "released", {"x-confidence": "0.95"},
                              body=lambda t: {"applicant": {"id": t}}),
    "predict-doubtful": Case("POST", "/predict", "/models/aio/predict", "held", {"x-confidence": "0.79"},
                             body=lambda t: {"applicant": {"id": t}}),
    "sse-stream": Case("POST", "/v1/chat/completions", "/v1/chat/completions", "released", {"x-confidence": "0.95"},
                       body=lambda t: {"model": "aio", "stream": True, "messages": [{"role": "user", "content": t}]}),
    "large-5mb": Case("GET", "/large", "/models/aio/large", "released", {"x-confidence": "0.95"}, query=True),
    "no-content-204": Case("POST", "/empty", "/models/aio/empty", "held", {}, body=lambda t: {"n": t}),
    "not-modified-304": Case("GET", "/cached", "/models/aio/cached", "held", {"if-none-match": ETAG}, query=True),
}


@pytest.fixture(scope="module")
def aiohttp_server(tmp_path_factory):
    require_aiohttp()  # fails the module's tests, with how to install it, when aiohttp is missing
    server = python_server("tests.thirdparty.aiohttp_server", tmp_path_factory.mktemp("aiohttp"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, aiohttp_server):
    gateway = gateway_in_front_of(tmp_path_factory.mktemp("gw-aiohttp"), {"aio": aiohttp_server.url})
    yield gateway
    stop_gateway(gateway)


def _both(gw, server, case: Case, token: str, *, level: int, encoding: str):
    suffix, body = case.request(token)
    headers = {**case.headers, "accept-encoding": encoding}
    direct = gw.direct(case.method, server.url + case.path + suffix, headers=headers, body=body)
    return direct, gw.call(case.method, case.via + suffix, level=level, headers=headers, body=body)


def test_aiohttp_compresses_what_the_client_accepts(gw, aiohttp_server, unique):
    """The premise: aiohttp compresses answers and streams as the client's Accept-Encoding allows, and not else."""
    for name in ("predict-confident", "sse-stream", "large-5mb"):
        for encoding in ENCODINGS:
            direct, _ = _both(gw, aiohttp_server, CASES[name], unique(), level=0, encoding=encoding)
            assert direct.status == 200 and direct.encoding == encoding, (name, direct.describe())
    assert _both(gw, aiohttp_server, CASES["no-content-204"], unique(), level=0, encoding="gzip")[0].status == 204
    assert _both(gw, aiohttp_server, CASES["not-modified-304"], unique(), level=0, encoding="gzip")[0].status == 304


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("level", (0, 1))
def test_answers_pass_through_byte_for_byte_at_levels_0_and_1(gw, aiohttp_server, unique, level, name, encoding):
    """The model answers; the gateway adds its headers and changes no byte of status or body."""
    gw.set_level(level)
    direct, through = _both(gw, aiohttp_server, CASES[name], unique(), level=level, encoding=encoding)
    assert_passed_through(direct, through, gw, level)
    if direct.status == 304:
        assert through.headers.get("etag") == direct.headers.get("etag") == ETAG, gw.explain(through)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("level", (2, 3))
def test_the_decision_at_levels_2_and_3_does_not_depend_on_compression(gw, aiohttp_server, unique, level, name,
                                                                        encoding):
    """Level 3 holds every answer; level 2 releases those whose confidence is at least 0.80 and holds the rest,
    a 204 or a 304 (which carry none) among them. A held answer is shown to the reviewer as the server's text."""
    case = CASES[name]
    gw.set_level(level)
    direct, through = _both(gw, aiohttp_server, case, unique(), level=level, encoding=encoding)
    if level == 2 and case.level_2 == "released":
        assert_released(direct, through, gw)
        return
    ticket = assert_held(through, gw, level)
    assert_recommendation_is(ticket, direct)
    if case.level_2 == "released" or name == "predict-doubtful":  # the JSON's confidence was read, gzip or not
        assert ticket["confidence"] == float(case.headers["x-confidence"]), ticket["reason"]


def test_metrics_never_count_a_status_0(gw, aiohttp_server, unique):
    """After every kind of answer at every level, no exchange is counted with status 0 (an answer never given)."""
    for level in LEVELS:
        gw.set_level(level)
        for case in CASES.values():
            suffix, body = case.request(unique())
            gw.call(case.method, case.via + suffix, level=level, headers={**case.headers, "accept-encoding": "gzip"},
                    body=body, check=False)
    assert_no_status_0(gw)
