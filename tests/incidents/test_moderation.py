"""The output check's reading of answers, and its classifier client against a real moderations server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.incidents.counters import TrafficCounters
from gateway.incidents.moderation import OutputChecks, answer_text
from gateway.policy import OutputCheck, load_policy
from tests.support import DEFAULT_POLICY, free_port


def test_the_text_a_model_answered_whole_streamed_or_as_json():
    whole = b'{"choices": [{"message": {"role": "assistant", "content": "Hello there"}}]}'
    stream = (b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
              b'data: {"choices": [{"delta": {"content": "lo"}}]}\n\ndata: [DONE]\n\n')
    assert answer_text(whole) == "Hello there"
    assert answer_text(stream) == "Hello"
    assert answer_text(b'{"decision": "deny"}') == '{"decision": "deny"}'


def _checks(url: str, store) -> OutputChecks:
    """The checks of one model `m` whose policy names a classifier at `url`."""
    effective = load_policy(DEFAULT_POLICY).for_model("m").model_copy(update={"output_check": OutputCheck(url=url, model="guard")})
    return OutputChecks({"m": effective}, TrafficCounters(store))


async def test_any_server_of_the_moderations_shape_is_asked_and_understood(demo, tmp_path):
    from gateway.store import make_store

    store = make_store("embedded", tmp_path, liveness=2.0)
    checks = _checks(demo.url, store)
    try:
        assert await checks.classify("m", "a kind word") == (False, "the output check passed the answer")
        assert await checks.classify("m", "so violent") == (True, "the output check flagged the answer (violence)")
        demo.configure(fail_rate=1.0, fail_status=500)
        flagged, why = await checks.classify("m", "x")
        assert flagged is None and "answered 500 without moderation results" in why
    finally:
        await checks.stop()


async def test_an_unreachable_classifier_cannot_say(tmp_path):
    from gateway.store import make_store

    checks = _checks(f"http://127.0.0.1:{free_port()}", make_store("embedded", tmp_path, liveness=2.0))
    try:
        flagged, why = await checks.classify("m", "x")
        assert flagged is None and "could not be reached" in why
    finally:
        await checks.stop()


class _Guard(BaseHTTPRequestHandler):
    """Another moderations server (not the demo): wants a bearer key, answers in the OpenAI shape."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.headers.get("authorization") != "Bearer sk-guard":
            self._send(401, {"error": {"message": "bad key"}})
            return
        flagged = ["unsafe" in text for text in body["input"]]
        self._send(200, {"id": "modr-1", "model": body.get("model"),
                         "results": [{"flagged": f, "categories": {"S1": f}} for f in flagged]})

    def _send(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


async def test_a_key_comes_from_the_environment_variable_the_policy_names(tmp_path, monkeypatch):
    from gateway.store import make_store

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Guard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    effective = load_policy(DEFAULT_POLICY).for_model("m").model_copy(
        update={"output_check": OutputCheck(url=url, api_key_env="GUARD_KEY")})
    checks = OutputChecks({"m": effective}, TrafficCounters(make_store("embedded", tmp_path, liveness=2.0)))
    try:
        flagged, why = await checks.classify("m", "unsafe")
        assert flagged is None and "answered 401" in why  # no key in the environment: it cannot say
        monkeypatch.setenv("GUARD_KEY", "sk-guard")
        assert await checks.classify("m", "unsafe") == (True, "the output check flagged the answer (S1)")
        assert (await checks.classify("m", "fine"))[0] is False
    finally:
        await checks.stop()
        server.shutdown()


def test_a_policy_naming_a_classifier_badly_is_refused_naming_the_field(tmp_path):
    import pytest
    import yaml

    from gateway.configfile import ConfigError

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"extends": str(DEFAULT_POLICY), "models": {"chat": {"output_check": {"url": "ftp://guard"}}}}))
    with pytest.raises(ConfigError) as refused:
        load_policy(path)
    assert "models.chat.output_check.url" in str(refused.value)
