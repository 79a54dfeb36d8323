"""The official `openai` npm package from Node, unmodified, through held answers (a real `node` process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from tests.clients.conftest import NODE_CLIENT, client_token


def _node(gateway, model: str, **call) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (apt-get install -y nodejs); scripts/test.sh installs it")
    if not (NODE_CLIENT.parent / "node_modules" / "openai").is_dir():
        pytest.fail(f"the openai npm package is missing: npm ci --prefix {NODE_CLIENT.parent} (scripts/test.sh runs it)")
    args = {"baseURL": gateway.v1, "apiKey": client_token(), "model": model,
            "content": f"from node ({uuid.uuid4().hex[:8]})", **call}
    out = subprocess.run([node, str(NODE_CLIENT), json.dumps(args)], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_approve_gives_the_models_answer(gateway, reviewer, demo, stream):
    reviewer.will("held", "approve")
    result = _node(gateway, "held", stream=stream)
    assert result["ok"] and result["content"].startswith("Demo answer"), result
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_override_gives_the_reviewers_answer(gateway, reviewer, demo, stream):
    reviewer.will("held", "override", response="Answered by a person, in Node too.")
    result = _node(gateway, "held", stream=stream)
    assert result == {"ok": True, "content": "Answered by a person, in Node too.", **({"chunks": 2} if stream else {})}
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_reject_raises_with_the_reviewers_note(gateway, reviewer, demo, stream):
    reviewer.will("held", "reject", note="needs a manager's sign-off")
    result = _node(gateway, "held", stream=stream)
    assert not result["ok"] and "needs a manager's sign-off" in result["error"]["message"], result
    assert result["error"]["code"] == "rejected_by_reviewer"
    if not stream:
        assert (result["error"]["name"], result["error"]["status"]) == ("PermissionDeniedError", 403)
    assert demo.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_no_decision_in_time_raises_naming_the_ticket(gateway, demo, stream):
    result = _node(gateway, "impatient", stream=stream)
    error = result["error"]
    assert not result["ok"] and error["code"] == "decision_pending" and error["ticket"] in error["message"], result
    if not stream:
        assert error["status"] == 423
    assert gateway.get(f"/v1/decisions/{error['ticket']}", "client").status_code == 202
    decided = gateway.post(f"/review/tickets/{error['ticket']}/decision", {"action": "approve"}, "reviewer")
    assert decided.status_code == 200
    assert gateway.get(f"/v1/decisions/{error['ticket']}", "client").status_code == 200
    assert demo.stats()["requests"] == 1


def test_level_4_is_answered_by_a_human_and_never_calls_the_model(gateway, reviewer, demo):
    reviewer.will("paused", "override", response="A person, while the model is paused.")
    assert _node(gateway, "paused")["content"] == "A person, while the model is paused."
    assert demo.stats()["requests"] == 0


def test_a_held_low_confidence_stream_at_level_2_streams_once_approved(gateway, reviewer, demo):
    reviewer.will("doubtful", "approve")
    result = _node(gateway, "doubtful", stream=True, headers={"x-demo-confidence": "0.4"})
    reviewer.join()
    assert result["ok"] and result["content"].startswith("Demo answer") and result["chunks"] > 2, result
    assert len(reviewer.decided) == 1 and demo.stats()["requests"] == 1


def test_a_rejected_stream_at_level_2_raises(gateway, reviewer, demo):
    reviewer.will("doubtful", "reject", note="too unsure to send")
    result = _node(gateway, "doubtful", stream=True, headers={"x-demo-confidence": "0.4"})
    assert not result["ok"] and "too unsure to send" in result["error"]["message"], result
    assert demo.stats()["requests"] == 1
