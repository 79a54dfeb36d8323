"""scripts/fleet.py: a fleet behind nginx that keeps answering when a replica is killed, and its command's verdict.

The module is used as tests and other engineers use it: three `gateway serve` replicas on
one Redis behind a real nginx, open-loop load through nginx, one replica killed with
SIGKILL under that load. The command is run as the README shows it, once where everything
must hold (exit 0) and once where nothing can (the only replica killed: exit 1, the
problems named), so a verdict that always says "held" fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx

from scripts.fleet import Fleet
from scripts.fleetlib.faults import Phase, served_by, tolerated
from scripts.fleetlib.load import Load
from tests.support import ROOT

SCRIPT = ROOT / "scripts" / "fleet.py"


def test_nginx_keeps_answering_through_the_other_replicas_when_one_is_killed(tmp_path):
    with Fleet(replicas=3, store="redis", level=0, workdir=tmp_path) as fleet:
        addresses = [f"127.0.0.1:{r.port}" for r in fleet.replicas]
        assert len({r.data_dir for r in fleet.replicas}) == 3
        slots = [r.evidence_slots()[-1] for r in fleet.replicas]  # one log each, in the one shared directory
        assert len(set(slots)) == 3 and all(s.startswith(str(fleet.evidence_dir) + "/replica-") for s in slots), slots
        conf = (tmp_path / "nginx" / "nginx.conf").read_text()
        assert all(f"server {a} " in conf for a in addresses), conf

        with httpx.Client(timeout=10) as client:  # nginx spreads requests and passes the request id both ways
            seen = set()
            for i in range(12):
                r = client.post(f"{fleet.url}/models/demo/predict", headers={**fleet.auth("client"), "x-request-id": f"t-{i}"},
                                json={"applicant": {"id": f"a-{i}"}})
                assert r.status_code == 200 and r.headers["x-request-id"] == f"t-{i}", (r.status_code, r.text)
                seen.add(r.headers["x-fleet-upstream"])
            assert seen == set(addresses), seen
            body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
            with client.stream("POST", f"{fleet.url}/v1/chat/completions", headers=fleet.auth("client"), json=body) as s:
                assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
                events = [line for line in s.iter_lines() if line.startswith("data:")]
            assert events[-1] == "data: [DONE]" and len(events) > 2

        load = Load(fleet.url, rate=100).start()
        time.sleep(2.0)
        victim = fleet.replicas[1]
        killed_at = time.monotonic()
        assert fleet.kill_replica(1) == -9
        killed = time.monotonic()
        time.sleep(3.0)
        answers = load.stop()

        assert not victim.alive
        before = [a for a in answers if a.done < killed_at]
        after = [a for a in answers if a.sent > killed + 1.0]  # nginx has seen every connection to it close
        assert len(before) > 100 and all(a.status == 200 for a in before), {a.status for a in before}
        assert {served_by(a) for a in before} == set(addresses)
        assert len(after) > 150, len(after)
        assert all(a.status == 200 for a in after), sorted({(a.status, a.error, a.upstream) for a in after if a.status != 200})
        assert {served_by(a) for a in after} == {addresses[0], addresses[2]}
        phase = Phase("kill", "replica", killed_at, fault_done=killed, target=addresses[1])
        wrong = [a for a in answers if a.status != 200 and not tolerated(a, phase)]
        assert not wrong, [(a.request_id, a.status, a.error, a.upstream) for a in wrong]  # at most nginx's 502 in flight

        fleet.restart_replica(1)
        assert fleet.ready(1) and victim.alive
        deadline = time.monotonic() + 10  # nginx tries it again after fail_timeout (2 s)
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                r = client.post(f"{fleet.url}/models/demo/predict", headers=fleet.auth("client"),
                                json={"applicant": {"id": "back"}})
                assert r.status_code == 200, r.text
                if r.headers["x-fleet-upstream"] == addresses[1]:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the restarted replica got no request through nginx")
        assert len(victim.evidence_slots()) == 2  # it opened a log again, in the shared directory
        live = [r.evidence_slots()[-1] for r in fleet.replicas]
        assert len(set(live)) == 3, live


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_command_reports_a_fleet_that_held(tmp_path):
    done = _run("--replicas", "3", "--store", "redis", "--level", "3", "--rate", "60", "--seconds", "6",
                "--faults", "replica", "--workdir", str(tmp_path))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"^before any fault +0\.0s +\d+  202 x\d+ ", out, re.M), out
    assert re.search(r"^kill -9 replica 1 ", out, re.M), out
    assert "restarted at +" in out
    assert "unexpected 5xx: none" in out
    tickets = re.search(r"^tickets: (\d+) answered 202, (\d+) still in the review queue$", out, re.M)
    assert tickets and int(tickets[1]) > 200 and tickets[1] == tickets[2], out
    assert re.search(r"^held: ", out, re.M) and "problem:" not in out, out
    assert len(list((tmp_path / "evidence").glob("replica-*"))) == 3  # --workdir keeps what the fleet wrote


def test_the_command_names_what_did_not_hold_and_exits_1(tmp_path):
    # One replica, killed: nothing can answer until it is back, and nginx's 502s are not explained by anything in flight.
    done = _run("--replicas", "1", "--store", "embedded", "--level", "0", "--rate", "50", "--seconds", "6",
                "--faults", "replica", "--restore-after", "1.5", "--workdir", str(tmp_path))
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert problems, out
    assert any(re.search(r"kill -9 replica 0: \d+ answer\(s\) 502 from nginx \(a 5xx that should not be", p)
               for p in problems), problems
    assert "held: " not in out
    assert re.search(r"^kill -9 replica 0 .* 502 from nginx x\d+", out, re.M), out


def test_the_command_refuses_a_fault_its_store_cannot_have():
    done = _run("--store", "cluster", "--faults", "sentinel", "--seconds", "1")
    assert done.returncode == 2 and "--faults sentinel needs --store sentinel" in done.stderr, done.stderr


def test_the_readme_commands_are_the_commands():
    """Each `scripts/fleet.py` command in README.md's section parses as written; each compose service it names exists."""
    import shlex

    import yaml

    from scripts.fleet import _parse

    text = (ROOT / "README.md").read_text()
    start = text.index("\n## A fleet on one machine\n")
    section = text[start: text.index("\n## ", start + 1)]
    commands = [shlex.split(line, comments=True) for line in section.splitlines()
                if line.startswith(".venv/bin/python scripts/fleet.py")]
    assert len(commands) == 2, commands
    for argv in commands:
        _parse(argv[2:])  # argparse exits 2 on anything it does not know
    assert any("--serve" in argv for argv in commands)
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    for line in section.splitlines():
        if line.startswith("docker compose "):
            argv = shlex.split(line, comments=True)
            if argv[2] in ("kill", "start", "stop", "restart"):
                assert argv[3:] and all(name in compose for name in argv[3:]), line
