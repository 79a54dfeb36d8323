"""Reload without restart: two gateway processes on one real Redis, tokens changed in their files."""

from __future__ import annotations

import hashlib
import signal
import time

import httpx
import yaml

from tests.support import GatewayProcess, auth, free_port, write_config

NEW_TOKEN = "gw_test_added_by_reload"


def _status(url: str, token: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {token}"}, timeout=10).status_code


def _rewrite(path, change) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _add_and_remove(doc) -> None:
    doc["tokens"] = [t for t in doc["tokens"] if t["id"] != "test-client2"]
    doc["tokens"].append({"id": "added", "role": "client", "sha256": hashlib.sha256(NEW_TOKEN.encode()).hexdigest()})


def _eventually(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_reload_on_one_replica_changes_tokens_on_both(tmp_path, redis_url, demo):
    # each replica reads its own file (as on separate machines); both are updated before the reload
    configs = [write_config(tmp_path / f"r{i}", {"demo": {"v1": demo.url}}, store=redis_url) for i in (0, 1)]
    replicas = [GatewayProcess(c, free_port()).start() for c in configs]
    try:
        for r in replicas:
            assert _status(r.url, "gw_test_client_two") == 200 and _status(r.url, NEW_TOKEN) == 401

        # an invalid file: refused with its problem named, nothing changes
        for c in configs:
            _rewrite(c, lambda d: d["tokens"].append({"id": "bad", "role": "wizard", "sha256": "00"}))
        answer = httpx.post(f"{replicas[0].url}/admin/reload", headers=auth("operator"), timeout=20)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["type"] == "reload_refused" and error["request_id"] and error["problems"], error
        assert any("tokens" in p for p in error["problems"]), error
        # a field only a restart applies: refused, naming it
        for c in configs:
            _rewrite(c, lambda d: d["tokens"].pop())
            _rewrite(c, lambda d: d.__setitem__("data_dir", str(tmp_path / "elsewhere")))
        answer = httpx.post(f"{replicas[0].url}/admin/reload", headers=auth("operator"), timeout=20)
        assert answer.status_code == 422 and "data_dir" in answer.text and "restart" in answer.text, answer.text
        for r in replicas:
            assert _status(r.url, "gw_test_client_two") == 200 and _status(r.url, NEW_TOKEN) == 401

        # only operators may ask
        assert httpx.post(f"{replicas[0].url}/admin/reload", headers=auth("client"), timeout=10).status_code == 403

        for c, old in zip(configs, (tmp_path / "r0" / "data", tmp_path / "r1" / "data")):
            _rewrite(c, lambda d, old=old: d.__setitem__("data_dir", str(old)))
            _rewrite(c, _add_and_remove)
            _rewrite(c, lambda d: d["models"]["demo"]["versions"].__setitem__("v2", {"upstream": demo.url}))
            _rewrite(c.parent / "gateway-policy.yaml", lambda d: d.update(
                triggers={"error_rate": {"threshold": 0.05}}, review={"timeout": "90s"}))
        answer = httpx.post(f"{replicas[0].url}/admin/reload", headers=auth("operator"),
                            json={"reason": "rotate client2"}, timeout=20)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "applied" and len(body["applied_by"]) == 2 == len(body["replicas"]), body
        for changes in body["changes"].values():
            assert {"token added: added", "token removed: test-client2", "version added: demo/v2",
                    "policy triggers", "policy review"} <= set(changes), body
        for r in replicas:
            versions = httpx.get(f"{r.url}/admin/models/demo/versions", headers=auth("operator"), timeout=10)
            assert "v2" in versions.text, versions.text
            assert _status(r.url, NEW_TOKEN) == 200, r.log()
            assert _status(r.url, "gw_test_client_two") == 401
            assert _status(r.url, "gw_test_client") == 200
        assert "config reloaded" in replicas[1].log()

        # SIGHUP on one process: it reloads (here: the second token removed in its file)
        _rewrite(configs[1], lambda d: d.__setitem__("tokens", [t for t in d["tokens"] if t["id"] != "added"]))
        replicas[1].proc.send_signal(signal.SIGHUP)
        assert _eventually(lambda: _status(replicas[1].url, NEW_TOKEN) == 401), replicas[1].log()
        assert _status(replicas[1].url, "gw_test_client") == 200
        assert replicas[1].proc.poll() is None
        # SIGHUP with an invalid file: the log says why, the old config keeps serving
        _rewrite(configs[1], lambda d: d.__setitem__("tokens", "not a list"))
        replicas[1].proc.send_signal(signal.SIGHUP)
        assert _eventually(lambda: "SIGHUP: reload refused" in replicas[1].log()), replicas[1].log()
        assert "tokens" in replicas[1].log().split("SIGHUP: reload refused", 1)[1].splitlines()[0]
        assert _status(replicas[1].url, "gw_test_client") == 200 and replicas[1].proc.poll() is None
    finally:
        for r in replicas:
            r.stop()
    assert "Traceback" not in replicas[0].log() + replicas[1].log()


async def test_a_reload_is_recorded_with_who_asked_and_the_digests(make_gateway):
    async with make_gateway() as gw:
        path = gw.gateway.config.source
        _rewrite(path, _add_and_remove)
        r = await gw.client.post("/admin/reload", headers=auth("operator"), json={"reason": "rotate"})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        assert (await gw.client.get("/v1/models", headers={"authorization": f"Bearer {NEW_TOKEN}"})).status_code == 200
        log = gw.gateway.recorder.log
        actions = [log.get(i) for i in range(log.size)]
        reloaded = next(a for a in actions if a.get("action") == "config_reloaded")
        assert (reloaded["actor"], reloaded["reason"]) == ("test-operator", "rotate")
        assert reloaded["config_digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert reloaded["policy_digest"] == gw.gateway.policy.digest and "token added: added" in reloaded["changes"]

        # a reload that would remove the active version is refused, and the old config keeps serving
        _rewrite(path, lambda d: d["models"]["demo"]["versions"].__setitem__("v0", d["models"]["demo"]["versions"]["v1"]))
        _rewrite(path, lambda d: d["models"]["demo"]["versions"].pop("v1"))
        r = await gw.client.post("/admin/reload", headers=auth("operator"))
        assert r.status_code == 422 and "active version" in r.text, r.text
        assert "v1" in gw.gateway.catalog.models["demo"].versions
        assert (await gw.client.get("/v1/models", headers={"authorization": f"Bearer {NEW_TOKEN}"})).status_code == 200
        actions = [log.get(i) for i in range(log.size)]
        refused = next(a for a in actions if a.get("action") == "config_reload_refused")
        assert refused["actor"] == "test-operator" and any("v1" in p for p in refused["problems"]), refused
