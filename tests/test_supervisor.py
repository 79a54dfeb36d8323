"""`gateway serve --workers 2`: real processes on one loopback port, over real HTTP.

Each worker is found by its replica id (`GET /admin/oversight` says which replica
answered; an embedded worker's id carries its pid). A keep-alive connection stays with
the worker that accepted it, so a client with one connection speaks to one worker.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pki import pki  # noqa: F401  (a fixture)
from tests.support import (
    GatewayProcess,
    auth,
    dies_with_tests,
    free_port,
    wait_port,
    write_config,
)

POLICY = {"oversight": {"max_staleness": "1s"}}  # a dead worker stops counting as live after 1 s


@dataclass
class Workers(GatewayProcess):
    """`gateway serve --workers N` in its own process group of processes."""

    workers: int = 2
    more: tuple[str, ...] = ()

    def start(self, timeout: float = 30.0) -> "Workers":
        self.log_path = self.log_path or self.config.parent / "gateway.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config), "--port", str(self.port),
             "--workers", str(self.workers), *self.more],
            stdout=log, stderr=log, env=self._environment(), preexec_fn=dies_with_tests(),
        )
        wait_port(self.port, self.proc, timeout)
        deadline = time.monotonic() + timeout
        while "gateway serving with" not in self.log():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()[-3000:]
            time.sleep(0.05)
        return self


def _pinned(url: str, count: int, timeout: float = 15.0, verify: Any = True) -> dict[str, httpx.Client]:
    """One single-connection client per worker: {replica id: client}, opening connections until each worker has one."""
    found: dict[str, httpx.Client] = {}
    spare: list[httpx.Client] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, f"only reached {sorted(found)}"
        client = httpx.Client(base_url=url, timeout=10, verify=verify,
                              limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        replica = _replica(client)
        (spare if replica in found else found.__setitem__(replica, client) or []).append(client)
    for client in spare:
        client.close()
    return found


def _replica(client: httpx.Client) -> str:
    r = client.get("/admin/oversight", headers=auth("operator"))
    assert r.status_code == 200, r.text
    return r.json()["replica"]


def _pid(replica: str) -> int:
    return int(replica.split("-")[1])  # embedded-{pid}-{random}


def _predict(client: httpx.Client) -> httpx.Response:
    return client.post("/models/demo/predict", json={"applicant": {"id": "w-1"}}, headers=auth("client"))


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def gateway(tmp_path, demo):
    config = write_config(tmp_path, {"demo": {"v1": demo.url}}, policy=POLICY)
    running = Workers(config, free_port()).start()
    yield running
    running.stop()


def test_both_workers_serve_and_confirm_the_kill_switch(gateway, demo):
    clients = _pinned(gateway.url, 2)
    try:
        assert len({_pid(replica) for replica in clients}) == 2
        for client in clients.values():
            r = _predict(client)
            assert r.status_code == 200 and r.headers["x-oversight-level"] == "0", r.text
        reached = demo.stats()["requests"]
        first = next(iter(clients.values()))
        r = first.post("/admin/kill", json={"reason": "drill"}, headers=auth("operator"))
        assert r.status_code == 200, r.text
        assert {k: r.json()[k] for k in ("status", "level", "applied_by", "replicas")} == \
            {"status": "applied", "level": 4, "applied_by": 2, "replicas": 2}
        assert "unconfirmed" not in r.json()
        for replica, client in clients.items():  # at once, on every worker: nobody reaches the model
            r = _predict(client)
            assert (r.status_code, r.headers["x-oversight-level"], r.headers["x-oversight-route"]) == (202, "4", "human")
            view = client.get("/admin/oversight", headers=auth("operator")).json()
            assert view["replica"] == replica and view["models"]["demo"]["effective"] == 4
        assert demo.stats()["requests"] == reached
    finally:
        for client in clients.values():
            client.close()


def test_a_decision_on_one_worker_answers_a_client_waiting_on_the_other(gateway):
    clients = _pinned(gateway.url, 2)
    try:
        waiting, deciding = clients.values()
        r = deciding.put("/admin/oversight/models/demo", json={"level": 3, "reason": "hold all"}, headers=auth("operator"))
        assert r.status_code == 200 and r.json()["applied_by"] == 2, r.text
        import threading

        answer: list[httpx.Response] = []
        started = time.monotonic()
        asking = threading.Thread(target=lambda: answer.append(waiting.post(
            "/models/demo/predict", json={"applicant": {"id": "w-2"}}, headers={**auth("client"), "prefer": "wait=8"})))
        asking.start()
        ticket = None
        while ticket is None and time.monotonic() - started < 5:
            pending = deciding.get("/review/tickets", params={"status": "pending"}, headers=auth("reviewer")).json()
            ticket = next((t["id"] for t in pending["tickets"]), None) if pending.get("tickets") else None
            time.sleep(0.05)
        assert ticket is not None
        r = deciding.post(f"/review/tickets/{ticket}/decision", json={"action": "approve", "note": "fine"},
                          headers=auth("reviewer"))
        assert r.status_code == 200, r.text
        asking.join(10)
        assert answer and answer[0].status_code == 200, answer and answer[0].text
        assert answer[0].headers["x-decision"] == "approve"
        assert time.monotonic() - started < 6  # woken by the decision, not by the end of its 8 s wait
    finally:
        for client in clients.values():
            client.close()


def test_a_worker_killed_with_sigkill_is_restarted_and_serves_again(gateway):
    clients = _pinned(gateway.url, 2)
    for client in clients.values():
        client.close()
    victim, survivor = sorted(clients)
    os.kill(_pid(victim), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while "exited with signal SIGKILL; restarting it" not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.05)
    assert f"(pid {_pid(victim)}) exited with signal SIGKILL" in gateway.log()
    deadline = time.monotonic() + 15
    while len(_children(gateway.proc.pid)) < 2 or gateway.log().count('"worker 0 serving"') + \
            gateway.log().count('"worker 1 serving"') < 3:
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.05)
    now = _pinned(gateway.url, 2)
    try:
        assert survivor in now and victim not in now
        for client in now.values():
            assert _predict(client).status_code == 200
        time.sleep(1.1)  # the dead worker's last heartbeat is older than max_staleness now
        r = now[survivor].put("/admin/oversight/models/demo", json={"level": 2, "reason": "after restart"},
                              headers=auth("operator"))
        assert (r.json()["applied_by"], r.json()["replicas"]) == (2, 2), r.text
    finally:
        for client in now.values():
            client.close()
    assert "Traceback" not in gateway.log()


def test_sigterm_stops_every_worker_and_the_demo_model_and_exits_zero(tmp_path):
    demo_port = free_port()
    config = write_config(tmp_path, {"demo": {"v1": f"http://127.0.0.1:{demo_port}"}}, policy=POLICY)
    running = Workers(config, free_port(), more=("--with-demo-model",)).start()
    clients = _pinned(running.url, 2)
    try:
        for client in clients.values():
            r = _predict(client)
            assert r.status_code == 200 and r.json()["model"].startswith("demo"), r.text
    finally:
        for client in clients.values():
            client.close()
    children = _children(running.proc.pid)
    assert {_pid(replica) for replica in clients} < children  # the workers, and the demo model
    assert len(children) == 3
    assert running.stop(signal.SIGTERM) == 0
    assert not any(_alive(pid) for pid in children)
    log = running.log()
    assert "Traceback" not in log and "exited with" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{demo_port}/health", timeout=2)


def test_a_port_in_use_is_one_line_and_exit_1_even_for_another_gateways_workers(gateway, tmp_path):
    for client in _pinned(gateway.url, 2).values():  # both workers listen
        client.close()
    other = write_config(tmp_path / "other", {"demo": {"v1": "http://127.0.0.1:1"}})
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(other), "--workers", "2",
                             "--port", str(gateway.port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{gateway.port}: Address already in use"


def test_a_bad_config_is_one_line_and_exit_2(tmp_path):
    config = write_config(tmp_path, {"demo": {"v1": "ftp://127.0.0.1:1"}})
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {config}: models.demo.versions.v1.upstream: URL scheme should be "
                                     f"'http' or 'https' (got 'ftp://127.0.0.1:1')")


def test_workers_that_cannot_start_are_one_line_and_exit_1(tmp_path, demo):
    (tmp_path / "data").write_text("a file where the data folder should be")
    config = write_config(tmp_path, {"demo": {"v1": demo.url}})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2",
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker 0 exited with status ") and last.endswith("before it served; the log lines above say why")
    assert "gateway failed to start" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20  # given up at once, not retried


def test_workers_serve_tls_from_the_config_and_a_key_that_does_not_fit_is_one_line_and_exit_2(tmp_path, demo, pki):
    tls = {"cert": str(pki["server"]), "key": str(pki["server_key"])}
    config = write_config(tmp_path / "good", {"demo": {"v1": demo.url}}, policy=POLICY,
                          extra={"listen": {"host": "127.0.0.1", "port": 0, "tls": tls}})
    running = Workers(config, free_port()).start()
    try:
        verify = ssl.create_default_context(cafile=str(pki["ca"]))
        clients = _pinned(f"https://127.0.0.1:{running.port}", 2, verify=verify)
        for client in clients.values():
            assert _predict(client).status_code == 200
            client.close()
    finally:
        assert running.stop() == 0
    wrong = write_config(tmp_path / "wrong", {"demo": {"v1": demo.url}}, policy=POLICY,
                         extra={"listen": {"host": "127.0.0.1", "port": 0,
                                           "tls": {"cert": str(pki["server"]), "key": str(pki["client_key"])}}})
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(wrong), "--workers", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {wrong}: listen.tls: cannot use {pki['server']} with {pki['client_key']}: ")


def test_sighup_to_the_supervisor_reloads_the_config_on_every_worker(gateway):
    import hashlib

    import yaml

    config = yaml.safe_load(gateway.config.read_text())
    config["tokens"].append({"id": "added-later", "role": "client", "sha256": hashlib.sha256(b"gw_added_later").hexdigest()})
    gateway.config.write_text(yaml.safe_dump(config, sort_keys=False))
    clients = _pinned(gateway.url, 2)
    try:
        added = {"authorization": "Bearer gw_added_later"}
        body = {"applicant": {"id": "w-2"}}
        assert {c.post("/models/demo/predict", json=body, headers=added).status_code for c in clients.values()} == {401}
        gateway.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while {c.post("/models/demo/predict", json=body, headers=added).status_code for c in clients.values()} != {200}:
            assert time.monotonic() < deadline and gateway.proc.poll() is None, gateway.log()[-2000:]
            time.sleep(0.1)
    finally:
        for client in clients.values():
            client.close()
