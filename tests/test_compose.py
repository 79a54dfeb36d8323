"""docker-compose.yaml, checked without docker: what it mounts exists, and each program accepts its config.

The compose file describes the fleet of scripts/fleet.py in containers (README, "A fleet on
one machine"). Docker is not needed here: the file is parsed, every file it mounts must be in
the repository, the gateway config loads with the gateway's own loader as the image would
load it (its environment from the Dockerfile), nginx's config passes `nginx -t` once the
compose hostnames are loopback, and the Redis master, a replica and a sentinel start on free
ports from the compose arguments and sentinel.conf, and find each other.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from gateway.config import load_config
from gateway.store.redis_targets import parse_target
from tests.support import ROOT, dies_with_tests, free_port, redis_server_binary, wait_port
from tests.test_container import dockerfile_stages, environment
from tests.thirdparty.harness import nginx_binary

COMPOSE = ROOT / "docker-compose.yaml"
GATEWAYS = ("gateway-1", "gateway-2", "gateway-3")
REDIS = ("redis-master", "redis-replica-1", "redis-replica-2")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
DEMO_TOKENS = ("gw_demo_client", "gw_demo_reviewer", "gw_demo_operator", "gw_demo_auditor")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())  # compose files use YAML merge keys (<<:), which safe_load expands
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "docker-compose.yaml: no services"
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each `volumes:` entry in the short syntax."""
    out = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"long-syntax volume {entry!r}: this test reads the short one"
        source, target, *mode = entry.split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def bind_source(source: str) -> Path | None:
    """The host path of a bind mount (a source starting with . or /), None for a named volume."""
    return (ROOT / source).resolve() if source.startswith((".", "/")) else None


def mounted_file(service: dict[str, Any], target: str) -> Path:
    found = [bind_source(s) for s, t, _ in mounts(service) if t == target]
    assert len(found) == 1 and found[0] is not None, f"expected one bind mount at {target}, found {mounts(service)}"
    return found[0]


def image_env() -> dict[str, str]:
    return environment(dockerfile_stages()[-1])


# the file and what it mounts ------------------------------------------------------------------------
def test_the_topology_is_the_fleets(compose):
    names = set(services(compose))
    for name in (*REDIS, *SENTINELS, *GATEWAYS, "demo-model", "nginx"):
        assert name in names, f"docker-compose.yaml: no service {name}"
    for name in (*GATEWAYS, "demo-model"):
        assert services(compose)[name].get("build") == ".", f"{name}: built from the repository's Dockerfile"
    assert (ROOT / "Dockerfile").is_file()
    ports = services(compose)["nginx"].get("ports", [])
    assert ports == ["127.0.0.1:8080:8080"], f"nginx: published on localhost:8080 (got {ports})"
    for name in names - {"nginx"}:
        assert not services(compose)[name].get("ports"), f"{name}: only nginx is published"


def test_every_mounted_file_is_in_the_repository(compose):
    declared = set((compose.get("volumes") or {}).keys())
    checked = 0
    for name, service in services(compose).items():
        for source, target, mode in mounts(service):
            path = bind_source(source)
            if path is None:
                assert source in declared, f"{name}: volume {source!r} is not declared under top-level volumes:"
                continue
            assert path.exists(), f"{name}: mounts {source} at {target}, which does not exist"
            assert ROOT in path.parents, f"{name}: mounts {source} from outside the repository"
            assert mode == "ro", f"{name}: {source} is a config file: mount it read-only"
            checked += 1
    assert checked >= 5  # gateway.yaml three times, sentinel.conf, nginx.conf


def test_each_gateway_has_its_own_data_volume_and_shares_the_evidence_volume(compose):
    env = image_env()
    config = load_config(mounted_file(services(compose)["gateway-1"], env["GATEWAY_CONFIG"]))
    evidence = str(config.evidence.directory)
    data_volumes = []
    for name in GATEWAYS:
        service = services(compose)[name]
        by_target = {t: s for s, t, _ in mounts(service)}
        assert env["GATEWAY_CONFIG"] in by_target, f"{name}: no config at {env['GATEWAY_CONFIG']}"
        assert mounted_file(service, env["GATEWAY_CONFIG"]) == ROOT / "deploy" / "compose" / "gateway.yaml"
        assert bind_source(by_target.get(env["GATEWAY_DATA_DIR"], ".")) is None, \
            f"{name}: a named volume at {env['GATEWAY_DATA_DIR']}"
        data_volumes.append(by_target[env["GATEWAY_DATA_DIR"]])
        assert by_target.get(evidence) == "evidence", f"{name}: the shared evidence volume at {evidence}"
        assert service.get("user") is None, f"{name}: runs as the image's user (uid 10001)"
        needs = service.get("depends_on", {})
        assert needs.get("evidence-init", {}).get("condition") == "service_completed_successfully", \
            f"{name}: starts once the evidence volume belongs to the gateway user"
    assert len(set(data_volumes)) == len(GATEWAYS), f"the gateways share a data volume: {data_volumes}"
    init = services(compose)["evidence-init"]
    assert ("evidence", evidence, "rw") in mounts(init) and evidence in init["entrypoint"]


# the gateway's config ----------------------------------------------------------------------
def test_the_gateway_config_loads_as_the_image_loads_it(compose, monkeypatch):
    env = image_env()
    monkeypatch.setenv("GATEWAY_DATA_DIR", env["GATEWAY_DATA_DIR"])  # the image's environment
    path = mounted_file(services(compose)["gateway-1"], env["GATEWAY_CONFIG"])
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", path.read_text()):
        service_env = services(compose)["gateway-1"].get("environment") or {}
        assert name in service_env, f"{path.name} uses ${{{name}}}, which the gateway services do not set"
        monkeypatch.setenv(name, str(service_env[name]))
    config = load_config(path)
    assert str(config.data_dir) == env["GATEWAY_DATA_DIR"]
    assert config.listen.host == "0.0.0.0" and config.listen.port == 8080

    target = parse_target(config.store)
    assert target.kind == "sentinel" and [h for h, _ in target.hosts] == list(SENTINELS), config.store
    assert {p for _, p in target.hosts} == {26379}
    sentinel_conf = mounted_file(services(compose)["sentinel-1"], "/etc/redis/sentinel.conf").read_text()
    monitor = re.search(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", sentinel_conf, re.M)
    assert monitor, "sentinel.conf: no `sentinel monitor NAME HOST PORT QUORUM`"
    assert monitor[1] == target.master_set, f"the gateways ask for {target.master_set}, the sentinels watch {monitor[1]}"
    assert monitor[2] == "redis-master" and monitor[4] == "2"
    assert re.search(r"^port 26379$", sentinel_conf, re.M)

    upstream = config.models["demo"].versions["v1"].urls[0]
    demo = services(compose)["demo-model"]["command"]
    assert upstream == f"http://demo-model:{demo[demo.index('--port') + 1]}/", (upstream, demo)
    assert demo[0] == "demo-model" and demo[demo.index("--host") + 1] == "0.0.0.0"
    hashes = {t.sha256 for t in config.tokens}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in DEMO_TOKENS}, "the quickstart's tokens"


# nginx ----------------------------------------------------------------------
def test_nginx_conf_passes_nginx_t_and_balances_over_every_gateway(compose, tmp_path):
    conf_path = mounted_file(services(compose)["nginx"], "/etc/nginx/nginx.conf")
    text = conf_path.read_text()
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", text, re.M)
    assert [h for h, _ in upstreams] == list(GATEWAYS), upstreams
    assert {int(p) for _, p in upstreams} == {8080}
    assert re.search(r"^\s*listen 8080;", text, re.M), "nginx listens on the port compose publishes"
    for directive in ("proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_buffering off;",
                      "keepalive 64;", "proxy_set_header X-Request-Id"):
        assert directive in text, f"nginx.conf: {directive}"
    local = text
    for host in GATEWAYS:  # nginx resolves upstream names at start: here there are none
        local = local.replace(f"{host}:", "127.0.0.1:")
    (tmp_path / "nginx.conf").write_text(local)
    user = ["-g", "user root;"] if os.geteuid() == 0 else []
    done = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-e", str(tmp_path / "error.log"), "-g", f"pid {tmp_path}/nginx.pid;", *user],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"nginx -t: {done.stderr}"
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr, done.stderr


# redis and the sentinels ----------------------------------------------------------------------
def _redis_args(command: list[str], *, port: int, master_port: int, directory: Path) -> list[str]:
    """A compose redis command on loopback: its own arguments, the compose names and ports made local."""
    assert command[0] == "redis-server", command
    args = ["127.0.0.1" if a == "redis-master" else str(master_port) if a == "6379" else a for a in command[1:]]
    return [redis_server_binary(), *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--protected-mode", "no"]


def test_redis_and_a_sentinel_start_from_the_compose_arguments_and_find_each_other(compose, tmp_path):
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], port: int) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=dies_with_tests())
        procs.append(proc)
        try:
            wait_port(port, proc)
        except RuntimeError as exc:
            raise AssertionError(f"{shlex.join(argv)}: {exc}: {proc.stderr.read().decode(errors='replace')}") from None

    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    try:
        for name, port in (("redis-master", master_port), ("redis-replica-1", replica_port)):
            directory = tmp_path / name
            directory.mkdir()
            start(_redis_args(services(compose)[name]["command"], port=port, master_port=master_port,
                              directory=directory), port)
        master = redis.Redis(port=master_port, decode_responses=True)
        assert master.config_get("appendonly")["appendonly"] == "yes"  # the gateway's persistence check is satisfied
        assert master.config_get("appendfsync")["appendfsync"] in ("everysec", "always")
        assert redis.Redis(port=replica_port, decode_responses=True).info("replication")["role"] == "slave"

        sentinel = services(compose)["sentinel-1"]
        script = " ".join(sentinel["command"])
        assert "/etc/redis/sentinel.conf" in script and "redis-server /data/sentinel.conf --sentinel" in script, script
        conf = mounted_file(sentinel, "/etc/redis/sentinel.conf").read_text()
        conf = re.sub(r"^port 26379$", f"port {sentinel_port}", conf, flags=re.M)
        conf = conf.replace("redis-master 6379", f"127.0.0.1 {master_port}")
        (tmp_path / "sentinel.conf").write_text(conf + f"bind 127.0.0.1\ndir {tmp_path}\n")
        start([redis_server_binary(), str(tmp_path / "sentinel.conf"), "--sentinel"], sentinel_port)

        name = re.search(r"^sentinel monitor (\S+)", conf, re.M)[1]
        watcher = redis.Redis(port=sentinel_port, decode_responses=True)
        deadline = time.monotonic() + 20
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = watcher.sentinel_master(name)
            if int(seen.get("num-slaves", 0)) >= 1:
                break
            time.sleep(0.1)
        assert watcher.sentinel_get_master_addr_by_name(name) == ("127.0.0.1", master_port)
        assert int(seen.get("num-slaves", 0)) >= 1, f"the sentinel did not find the replica: {seen}"
        assert int(seen["quorum"]) == 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()
