"""`gateway level|kill|review` against a real gateway: output lines, --json, refusals as one-line errors.

The gateway runs in process (uvicorn on a loopback port, in the test's event loop); the
CLI runs in a worker thread, so the loop keeps serving while the CLI's blocking HTTP call
waits for it. Every call asserts that no traceback reached stdout or stderr.
"""

from __future__ import annotations

import asyncio
import collections
import http.server
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass

import pytest

from gateway.cli import main
from tests.support import TOKENS, auth, free_port, serve_in_process, write_config

APPLICANT = {"applicant": {"id": "cli-1", "group": "A", "income": 52000}}
WHEN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"  # ISO 8601, UTC


@dataclass
class Run:
    code: int
    out: str
    err: str

    def one_line_error(self, code: int, *parts: str) -> None:
        """Exit `code`, nothing on stdout, exactly one `error: ...` line on stderr containing `parts`."""
        assert self.code == code, self
        assert self.out == "", self
        assert self.err.startswith("error: ") and self.err.count("\n") == 1 and self.err.endswith("\n"), self
        for part in parts:
            assert part in self.err, (part, self)


@pytest.fixture
def cli(monkeypatch, capsys):
    """`await cli(*argv, token=NAME)`: run `gateway ...` in a thread with GATEWAY_TOKEN set (None: unset)."""

    async def run(*argv: object, token: str | None = "operator") -> Run:
        monkeypatch.delenv("GATEWAY_URL", raising=False)
        if token is None:
            monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
        else:
            monkeypatch.setenv("GATEWAY_TOKEN", TOKENS[token])
        code = await asyncio.to_thread(main, [str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in out and "Traceback" not in err, out + err
        return Run(code, out, err)

    return run


@pytest.fixture
async def gw(tmp_path, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}})
    async with serve_in_process(config) as running:
        yield running


async def _levels(gw) -> dict:
    r = await gw.client.get("/admin/oversight", headers=auth("operator"))
    assert r.status_code == 200, r.text
    return r.json()


def _applied(line: str, scope: str, before: int, after: int) -> int:
    """Check an applied change's line; return its epoch."""
    match = re.fullmatch(rf"{scope}: level {before} -> {after} \(epoch (\d+), applied by 1/1 replicas\)\n", line)
    assert match, line
    return int(match.group(1))


# levels and kill ------------------------------------------------------------------------
async def test_set_get_and_kill_print_what_was_applied(gw, cli):
    url = ("--url", gw.url)
    r = await cli("level", "set", 2, "--reason", "watch closely", *url)
    assert r.code == 0 and r.err == ""
    global_epoch = _applied(r.out, "global", 0, 2)

    r = await cli("level", "set", 3, "--model", "demo", "--reason", "drift on group B", *url)
    assert r.code == 0 and r.err == ""
    model_epoch = _applied(r.out, "demo", 0, 3)
    assert model_epoch > global_epoch

    levels = await _levels(gw)
    assert levels["global"]["level"] == 2 and levels["global"]["epoch"] == global_epoch
    assert levels["models"]["demo"]["level"] == 3 and levels["models"]["demo"]["epoch"] == model_epoch

    r = await cli("level", "get", *url)
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    assert len(lines) == 2, r.out
    assert re.fullmatch(rf"global  level 2  set by test-operator at {WHEN}: watch closely", lines[0]), lines
    assert re.fullmatch(rf"demo    level 3 \(effective 3\)  set by test-operator at {WHEN}: drift on group B", lines[1]), lines

    r = await cli("kill", "--model", "demo", "--reason", "bad answers", *url)
    assert r.code == 0 and r.err == ""
    kill_epoch = _applied(r.out, "demo", 3, 4)
    r = await cli("kill", "--reason", "everything stops", *url)
    assert r.code == 0 and r.err == ""
    assert _applied(r.out, "global", 2, 4) > kill_epoch

    levels = await _levels(gw)
    assert levels["global"]["level"] == 4 and levels["models"]["demo"]["level"] == 4
    assert [h["action"] for h in levels["history"][:2]] == ["kill", "kill"]
    # the kill is real: the model is no longer called
    answer = await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
    assert answer.status_code == 202 and answer.headers["x-oversight-route"] == "human"


async def test_json_output_is_the_gateways_answer(gw, cli):
    url = ("--url", gw.url)
    r = await cli("level", "set", 1, "--reason", "more eyes", "--json", *url)
    assert r.code == 0 and r.err == ""
    data = json.loads(r.out)
    assert data["status"] == "applied" and data["scope"] == "global" and data["level"] == 1 and data["previous"] == 0
    assert data["applied_by"] == 1 and data["replicas"] == 1 and isinstance(data["epoch"], int)

    r = await cli("kill", "--model", "demo", "--reason", "stop", "--json", *url)
    assert r.code == 0
    killed = json.loads(r.out)
    assert killed["model"] == "demo" and killed["level"] == 4 and killed["epoch"] > data["epoch"]

    r = await cli("level", "get", "--json", *url)
    assert r.code == 0
    described = json.loads(r.out)
    assert described["global"]["level"] == 1 and described["global"]["reason"] == "more eyes"
    assert described["models"]["demo"] == {**described["models"]["demo"], "level": 4, "effective": 4, "set_by": "test-operator"}
    assert described["pending_changes"] == [] and described["stale"] is False


async def test_lowering_from_4_waits_for_a_second_operator(gw, cli):
    url = ("--url", gw.url)
    assert (await cli("kill", "--reason", "incident", *url)).code == 0

    r = await cli("level", "set", 0, "--reason", "resolved", *url)
    assert r.code == 0 and r.err == ""
    match = re.fullmatch(r"global: lowering to 0 waits for a second operator: gateway level approve (lc_[0-9a-f]+)\n", r.out)
    assert match, r.out
    change = match.group(1)
    assert (await _levels(gw))["global"]["level"] == 4  # not yet

    r = await cli("level", "get", *url)
    assert f"pending {change}: global 4 -> 0 by test-operator: resolved" in r.out.splitlines(), r.out

    (await cli("level", "approve", change, *url)).one_line_error(4, "403 forbidden", "second, different operator")
    assert (await _levels(gw))["global"]["level"] == 4

    r = await cli("level", "approve", change, "--reason", "checked the fix", *url, token="operator2")
    assert r.code == 0 and r.err == ""
    _applied(r.out, "global", 4, 0)
    levels = await _levels(gw)
    assert levels["global"]["level"] == 0 and levels["global"]["approved_by"] == "test-operator2"
    assert levels["pending_changes"] == []

    (await cli("level", "approve", change, *url, token="operator2")).one_line_error(1, "409 conflict", "already applied")


async def test_refusals_are_one_line_errors_and_change_nothing(gw, cli):
    url = ("--url", gw.url)
    before = await _levels(gw)
    for who in ("reviewer", "client", "auditor"):
        (await cli("level", "set", 2, "--reason", "x", *url, token=who)).one_line_error(4, "403 forbidden")
        (await cli("kill", "--reason", "x", *url, token=who)).one_line_error(4, "403 forbidden")
    (await cli("level", "get", *url, token="client")).one_line_error(4, "403 forbidden")
    (await cli("level", "set", 2, "--model", "nope", "--reason", "x", *url)).one_line_error(
        1, "404 not_found", "unknown model 'nope'", "known models: demo")
    (await cli("kill", "--model", "nope", "--reason", "x", *url)).one_line_error(1, "404 not_found", "unknown model 'nope'")
    (await cli("level", "approve", "lc_0000", *url)).one_line_error(1, "404 not_found", "no pending level change 'lc_0000'")
    (await cli("level", "set", 2, "--reason", "   ", *url)).one_line_error(1, "400 bad_request", "a reason is required")
    # refused by the command line itself, before any request
    (await cli("level", "set", 5, "--reason", "x", *url)).one_line_error(2, "gateway level set", "invalid choice: 5")
    (await cli("level", "set", -1, "--reason", "x", *url)).one_line_error(2, "gateway level set")
    (await cli("level", "set", "high", "--reason", "x", *url)).one_line_error(2, "invalid int value: 'high'")
    (await cli("level", "set", 2, *url)).one_line_error(2, "the following arguments are required: --reason")
    (await cli("kill", *url)).one_line_error(2, "the following arguments are required: --reason")
    after = await _levels(gw)
    assert after["global"] == before["global"] and after["models"] == before["models"] and after["history"] == before["history"]


async def test_no_token_is_exit_2_no_gateway_exit_3(gw, cli):
    r = await cli("level", "get", "--url", gw.url, token=None)
    r.one_line_error(2, "set GATEWAY_TOKEN")
    r = await cli("kill", "--reason", "x", "--url", gw.url, token=None)
    r.one_line_error(2, "set GATEWAY_TOKEN")
    assert (await _levels(gw))["global"]["level"] == 0

    nobody = f"http://127.0.0.1:{free_port()}"
    r = await cli("level", "get", "--url", nobody)
    r.one_line_error(3, f"cannot reach the gateway at {nobody}", "ConnectError")
    r = await cli("review", "list", "--url", nobody, token="reviewer")
    r.one_line_error(3, f"cannot reach the gateway at {nobody}")

    r = await cli("level", "get", "--url", gw.url, token="operator")  # and with both, it works
    assert r.code == 0 and r.out.startswith("global  level 0")


# review -------------------------------------------------------------------------------------
_REQUESTS: collections.defaultdict[int, itertools.count] = collections.defaultdict(itertools.count)  # per gateway


async def _hold(gw, n: int, level: int = 3) -> list[str]:
    r = await gw.client.put("/admin/oversight/models/demo", json={"level": level, "reason": "review"}, headers=auth("operator"))
    assert r.status_code == 200, r.text
    tickets = []
    for _ in range(n):  # different requests: a byte-identical one would be a retry joining the first ticket
        i = next(_REQUESTS[id(gw)])
        body = APPLICANT if i == 0 else {"applicant": {**APPLICANT["applicant"], "id": f"{APPLICANT['applicant']['id']}-{i}"}}
        answer = await gw.client.post("/models/demo/predict", json=body, headers=auth("client"))
        assert answer.status_code == 202, answer.text
        tickets.append(answer.json()["ticket"])
    return tickets


async def _ticket(gw, ticket_id: str) -> dict:
    return (await gw.client.get(f"/review/tickets/{ticket_id}", headers=auth("reviewer"))).json()


async def test_review_list_show_and_decide(gw, cli):
    url = ("--url", gw.url)
    r = await cli("review", "list", *url, token="reviewer")
    assert r.code == 0 and r.out == "no tickets\n"

    first, second = await _hold(gw, 2)
    r = await cli("review", "list", *url, token="reviewer")
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    assert [line.split()[0] for line in lines] == [second, first]  # newest first
    for line in lines:
        assert re.fullmatch(r"tk_[0-9a-f]+  pending  hold   demo/v1 level 3  age \d+s  level 3: every answer is reviewed; "
                            r"the model's answer is a recommendation", line), line

    r = await cli("review", "list", "--json", *url, token="reviewer")
    assert r.code == 0 and [t["id"] for t in json.loads(r.out)["tickets"]] == [second, first]

    r = await cli("review", "show", first, *url, token="reviewer")
    assert r.code == 0 and r.err == ""
    shown = json.loads(r.out)
    assert shown["id"] == first and shown["status"] == "pending" and shown["kind"] == "hold"
    assert shown["caller"] == "test-client" and shown["recommendation"]["status"] == 200
    assert json.loads(shown["request"]["body"]) == APPLICANT

    r = await cli("review", "decide", first, "approve", "--note", "looks right", *url, token="reviewer")
    assert r.code == 0 and r.err == "" and r.out == f"{first}: approve by test-reviewer\n"
    decided = await _ticket(gw, first)
    assert decided["status"] == "decided" and decided["decision"]["action"] == "approve"
    assert decided["decision"]["note"] == "looks right"

    # a bad --response is refused before anything is sent
    r = await cli("review", "decide", second, "override", "--response", "{not json", *url, token="reviewer")
    r.one_line_error(2, "--response must be JSON")
    assert (await _ticket(gw, second))["status"] == "pending"

    r = await cli("review", "decide", second, "override", "--response", '{"decision": "deny", "score": 0.1}', "--json",
                  "--reason", "false", *url, token="reviewer")
    assert r.code == 0 and r.err == ""
    assert json.loads(r.out)["decision"]["action"] == "override"
    assert json.loads(r.out)["decision"]["reason"] == "false"  # why the model's answer was wrong
    overridden = await _ticket(gw, second)
    assert overridden["status"] == "decided" and overridden["decision"]["response"] == {"decision": "deny", "score": 0.1}
    outcome = await gw.client.get(f"/v1/decisions/{second}", headers=auth("client"))
    assert outcome.status_code == 200 and outcome.json() == {"decision": "deny", "score": 0.1}

    r = await cli("review", "list", *url, token="reviewer")
    assert r.code == 0 and r.out == "no tickets\n"
    r = await cli("review", "list", "--status", "decided", *url, token="reviewer")
    assert sorted(line.split()[0] for line in r.out.splitlines()) == sorted([first, second])
    assert all(" decided " in line for line in r.out.splitlines()), r.out


async def test_review_refusals_are_one_line_errors(gw, cli):
    url = ("--url", gw.url)
    (held,) = await _hold(gw, 1, level=3)
    (human,) = await _hold(gw, 1, level=4)
    # the model was not called at level 4: there is nothing to approve
    (await cli("review", "decide", human, "approve", *url, token="reviewer")).one_line_error(
        1, "400 bad_request", "no model answer to approve")
    (await cli("review", "decide", held, "agree", *url, token="reviewer")).one_line_error(1, "400 bad_request", "`action`")
    (await cli("review", "decide", held, "override", *url, token="reviewer")).one_line_error(1, "400 bad_request")
    (await cli("review", "decide", held, "reject", *url, token="operator")).one_line_error(4, "403 forbidden")
    (await cli("review", "list", *url, token="client")).one_line_error(4, "403 forbidden")
    (await cli("review", "show", "tk_nope", *url, token="reviewer")).one_line_error(1, "404 not_found", "no ticket 'tk_nope'")
    (await cli("review", "decide", held, "maybe", *url, token="reviewer")).one_line_error(2, "invalid choice: 'maybe'")
    assert (await _ticket(gw, held))["status"] == "pending" and (await _ticket(gw, human))["status"] == "pending"

    r = await cli("review", "decide", human, "reject", "--note", "not today", *url, token="reviewer")
    assert r.code == 0 and r.out == f"{human}: reject by test-reviewer\n"
    (await cli("review", "decide", human, "reject", *url, token="reviewer2")).one_line_error(1, "409 conflict", "already decided")


# something that is not the gateway answers -------------------------------------------------
class _NotTheGateway(http.server.BaseHTTPRequestHandler):
    """Stands for a load balancer or another service at the URL: fixed status and body."""

    status = 502
    body = b""
    content_type = "text/html"

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("content-type", self.content_type)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def other_server():
    servers = []

    def start(status: int, body: bytes, content_type: str = "text/html") -> str:
        handler = type("Handler", (_NotTheGateway,), {"status": status, "body": body, "content_type": content_type})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


async def test_an_error_from_something_else_is_still_one_line(cli, other_server):
    url = other_server(503, b'{"error": {"type": "overloaded", "message": "try later"}}', "application/json")
    (await cli("level", "get", "--url", url)).one_line_error(1, "503 overloaded: try later")
    url = other_server(404, b"not here", "text/plain")
    (await cli("review", "list", "--url", url, token="reviewer")).one_line_error(1, "404 error: not here")


# Whatever answers at --url, and whatever is in GATEWAY_TOKEN: one line and an exit code, no traceback.
@pytest.mark.parametrize("case", [
    "html-error-body-is-printed-over-several-lines",
    "error-field-that-is-a-string-raises-AttributeError",
    "2xx-answer-that-is-not-the-gateways-raises-KeyError",
    "malformed-url-raises-InvalidURL",
    "non-ascii-token-raises-UnicodeEncodeError",
])
async def test_odd_answers_and_tokens_end_in_one_line(case, cli, other_server, monkeypatch):
    argv: list[object] = ["level", "get"]
    token = "operator"
    if case.startswith("html"):
        argv += ["--url", other_server(502, b"<html>\n<body>\nBad gateway\n</body>\n</html>\n")]
        code = 1
    elif case.startswith("error-field"):
        argv += ["--url", other_server(401, b'{"error": "invalid api key"}', "application/json")]
        code = 4  # 401: not authorised
    elif case.startswith("2xx"):
        argv += ["--url", other_server(200, b"<html>\n<body>welcome</body>\n</html>\n")]
        code = 1
    elif case.startswith("malformed"):
        argv += ["--url", "http://[::1"]
        code = 2
    else:
        monkeypatch.setitem(TOKENS, "odd", "gw_t\u00f6ken")
        token = "odd"
        argv += ["--url", f"http://127.0.0.1:{free_port()}"]
        code = 2
    try:
        r = await cli(*argv, token=token)
    except Exception as exc:  # what would reach a terminal as a traceback
        pytest.fail(f"raised {exc.__class__.__name__}: {exc}")
    r.one_line_error(code)


# versions and incidents ------------------------------------------------------------------
@pytest.fixture
async def gw2(tmp_path, demo):
    config = write_config(tmp_path / "two", {"demo": {"v1": demo.url, "v2": demo.url}})
    async with serve_in_process(config) as running:
        yield running


async def test_versions_activate_and_rollback(gw2, cli):
    run = await cli("versions", "demo", "--url", gw2.url)
    assert run.code == 0 and run.out.startswith("demo: active v1\n") and " * v1 " in run.out
    run = await cli("activate", "demo", "v2", "--reason", "new release", "--url", gw2.url)
    assert run.code == 0 and run.out.startswith("demo: v1 -> v2 (activate, epoch ")
    assert "checks: exists ok, verifies ok, upstream ok" in run.out
    run = await cli("rollback", "demo", "--reason", "regression", "--url", gw2.url)
    assert run.code == 0 and run.out.startswith("demo: v2 -> v1 (rollback")
    (await cli("activate", "demo", "v9", "--reason", "x", "--url", gw2.url)).one_line_error(1, "404 not_found")
    (await cli("activate", "demo", "v1", "--reason", "x", "--url", gw2.url)).one_line_error(1, "409 conflict", "already active")
    (await cli("rollback", "demo", "--reason", "x", "--url", gw2.url, token="reviewer")).one_line_error(4, "403 forbidden")
    history = json.loads((await cli("versions", "demo", "--json", "--url", gw2.url)).out)["history"]
    assert [h["action"] for h in history[:2]] == ["rollback", "activate"]


async def test_incident_list_show_ack_note_resolve(gw2, cli):
    r = await gw2.client.post("/admin/incidents", json={"category": "security", "severity": "critical", "summary": "token leaked"},
                              headers=auth("operator"))
    incident = r.json()["id"]
    run = await cli("incident", "list", "--url", gw2.url)
    assert run.code == 0 and run.out.startswith(f"{incident}  open ") and "token leaked" in run.out
    assert (await cli("incident", "ack", incident, "--url", gw2.url)).out == f"{incident}: acknowledged\n"
    assert (await cli("incident", "note", incident, "--note", "rotated", "--url", gw2.url)).code == 0
    (await cli("incident", "resolve", incident, "--url", gw2.url)).one_line_error(2, "--note")
    assert (await cli("incident", "resolve", incident, "--note", "all rotated", "--url", gw2.url)).out == f"{incident}: resolved\n"
    shown = (await cli("incident", "show", incident, "--url", gw2.url)).out
    assert "detected" in shown and "acknowledged" in shown and "rotated" in shown and "resolved" in shown
    (await cli("incident", "show", "inc_nope", "--url", gw2.url)).one_line_error(1, "404 not_found")
    assert "resolved" in (await cli("incident", "list", "--status", "resolved", "--url", gw2.url)).out


# as real processes: `python -m gateway ...` against the gateway ----------------------------------
async def _gateway(*argv: object, env: dict[str, str] | None = None, closed_stdout: bool = False) -> Run:
    """Run `python -m gateway ARGV` with GATEWAY_TOKEN and GATEWAY_URL unset unless `env` sets them."""
    import os
    import sys

    environment = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_TOKEN", "GATEWAY_URL")} | (env or {})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *map(str, argv), env=environment,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if closed_stdout:  # the reader went away before anything was written: `gateway ... | head` at its worst
        proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    run = Run(proc.returncode, (out or b"").decode(), err.decode())
    assert "Traceback" not in run.out + run.err, run
    return run


async def test_token_options_and_exit_codes_as_a_real_process(gw, cli, tmp_path):
    url = ("--url", gw.url)
    token_file = tmp_path / "operator.token"
    token_file.write_text(TOKENS["operator"] + "\n")
    wrong = "gw_not_a_token_the_gateway_knows"
    nobody = f"http://127.0.0.1:{free_port()}"
    with_file, forbidden, unknown, unreachable = await asyncio.gather(
        _gateway("level", "get", "--token-file", token_file, *url),
        _gateway("level", "set", 2, "--reason", "x", "--token", TOKENS["reviewer"], *url),
        _gateway("level", "get", "--token", wrong, *url),
        _gateway("level", "get", "--url", nobody, env={"GATEWAY_TOKEN": TOKENS["operator"]}),
    )
    assert with_file.code == 0 and with_file.out.startswith("global  level 0"), with_file
    forbidden.one_line_error(4, "403 forbidden")
    unknown.one_line_error(4, "401 unauthorized")
    unreachable.one_line_error(3, f"cannot reach the gateway at {nobody}")
    # what argparse and the token reader refuse needs no process of its own
    missing = await cli("level", "get", "--token-file", tmp_path / "nope", *url, token=None)
    missing.one_line_error(2, "cannot read the token file")
    both = await cli("level", "get", "--token", wrong, "--token-file", token_file, *url, token=None)
    both.one_line_error(2, "not allowed with argument")
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    (await cli("level", "get", "--token-file", empty, *url)).one_line_error(2, "is empty")
    for run in (with_file, forbidden, unknown, unreachable, missing, both):  # a token is sent, never shown
        assert all(secret not in run.out + run.err for secret in (wrong, *TOKENS.values())), run
    assert (await _levels(gw))["global"]["level"] == 0


async def test_times_for_people_numbers_in_json_and_a_closed_pipe(gw, cli):
    env = {"GATEWAY_TOKEN": TOKENS["operator"], "GATEWAY_URL": gw.url}  # the environment, not --url
    issued = await _gateway("token", "issue", "--id", "ci-bot", "--role", "client", "--ttl", "1h", "--reason", "ci",
                            "--json", env=env)
    assert issued.code == 0, issued
    expires = json.loads(issued.out)["expires_at"]
    table, as_json, closed = await asyncio.gather(_gateway("token", "list", env=env), _gateway("token", "list", "--json", env=env),
                                                  _gateway("token", "list", "--json", env=env, closed_stdout=True))
    line = next(line for line in table.out.splitlines() if line.startswith("ci-bot "))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    assert table.code == 0 and f"expires {stamp}" in line and re.search(rf"expires {WHEN}", line), line
    listed = next(t for t in json.loads(as_json.out)["tokens"] if t["id"] == "ci-bot")
    assert isinstance(listed["expires_at"], (int, float)) and abs(listed["expires_at"] - expires) < 1
    assert closed.code == 141 and closed.err == "", closed
    r = await cli("token", "expire", "ci-bot", "--at", "2030-01-02T03:04:05Z", "--reason", "rotate", "--url", gw.url)
    assert r.code == 0 and r.out.startswith("ci-bot: expires at 2030-01-02T03:04:05Z (epoch "), r
    (await cli("token", "expire", "ci-bot", "--at", "soon", "--reason", "x", "--url", gw.url)).one_line_error(2, "ISO 8601")
