"""`gateway config check|show|schema` (gateway/cli/config_cmd.py): offline commands, run in process through
`gateway.cli.main` (tests/test_cli_main.py runs `python -m gateway` itself)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import jsonschema
import pytest
import yaml

from tests.support import ROOT, TOKENS, write_config

ENC_KEY = base64.b64encode(b"k" * 32).decode()
OLD_KEY = base64.b64encode(b"o" * 32).decode()
SECRETS = {
    "upstream header": "Bearer upstream-api-key-123",
    "upstream password": "upstream-pass-456",
    "store password": "redis-pass-789",
    "webhook header": "hook-secret-abc",
    "webhook path": "T000/B000/slack-secret-def",
    "routing key": "pd-routing-key-ghi",
    "evidence key": ENC_KEY,
    "previous key": OLD_KEY,
}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def gateway(capsys):
    from gateway.cli import main

    def run(*argv: object) -> Run:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def secret_config(tmp_path):
    return write_config(tmp_path, {"demo": {
        "v1": {"upstream": "http://127.0.0.1:9000", "headers": {"Authorization": SECRETS["upstream header"]}},
        "v2": {"upstreams": [f"http://svc:{SECRETS['upstream password']}@127.0.0.1:9001"]},
    }}, extra={
        "store": f"redis://:{SECRETS['store password']}@127.0.0.1:6390/0",
        "timeouts": {"connect": "2s", "read": 30},
        "evidence": {"encryption_key": ENC_KEY, "key_id": "k2", "previous_keys": {"k1": OLD_KEY}},
        "notifications": [
            {"name": "slack", "format": "slack", "url": f"https://hooks.example.com/services/{SECRETS['webhook path']}",
             "headers": {"X-Hook-Token": SECRETS["webhook header"]}},
            {"name": "pager", "format": "pagerduty", "url": "https://events.example.com/v2/enqueue",
             "routing_key": SECRETS["routing key"]},
        ],
    })


def test_show_prints_the_effective_config_with_every_secret_redacted(gateway, secret_config):
    as_yaml, as_json = gateway("config", "show", secret_config), gateway("config", "show", secret_config, "--json")
    for run in (as_yaml, as_json):
        assert run.returncode == 0 and run.stderr == "", run
        for what, secret in SECRETS.items():
            assert secret not in run.stdout, what
        for token in TOKENS.values():
            assert token not in run.stdout and hashlib.sha256(token.encode()).hexdigest() not in run.stdout
    data = json.loads(as_json.stdout)
    assert yaml.safe_load(as_yaml.stdout) == data  # the same document, for people and for tools
    assert data["timeouts"]["connect"] == 2.0 and data["limits"]["max_body_bytes"] == 10 * 1024 * 1024  # defaults filled in
    assert data["store"] == "redis://[redacted]@127.0.0.1:6390/0"
    versions = data["models"]["demo"]["versions"]
    assert versions["v1"]["headers"] == {"Authorization": "[redacted]"} and versions["v1"]["upstream"] == "http://127.0.0.1:9000/"
    assert versions["v2"]["upstreams"] == ["http://[redacted]@127.0.0.1:9001/"]
    slack, pager = data["notifications"]
    assert slack["url"] == "https://hooks.example.com/[redacted]" and slack["headers"] == {"X-Hook-Token": "[redacted]"}
    assert pager["routing_key"] == "[redacted]"
    assert data["evidence"]["encryption_key"] == "[redacted]" and data["evidence"]["previous_keys"] == {"k1": "[redacted]"}
    assert {"id": "test-operator", "role": "operator", "roles": None} in data["tokens"]


def test_show_takes_gateway_config_and_refuses_a_bad_file_in_one_line_per_problem(gateway, tmp_path, secret_config,
                                                                                  monkeypatch):
    monkeypatch.setenv("GATEWAY_CONFIG", str(secret_config))  # read when the parser is built
    run = gateway("config", "show")
    assert run.returncode == 0 and "[redacted]" in run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\nlisten: {port: 99999}\n")
    run = gateway("config", "show", bad)
    assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr
    assert all(line.startswith("error: ") for line in run.stderr.splitlines()) and "listen.port" in run.stderr


def test_check_json(gateway, tmp_path):
    good = write_config(tmp_path, {"demo": {"v1": "http://127.0.0.1:9000"}})
    run = gateway("config", "check", good, "--json")
    assert run.returncode == 0 and run.stderr == ""
    assert json.loads(run.stdout) == {"ok": True, "file": str(good), "problems": [], "models": 1, "versions": 1,
                                      "tokens": len(TOKENS), "store": "embedded", "policy": json.loads(run.stdout)["policy"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\nsurprise: 1\n")
    run = gateway("config", "check", bad, "--json")
    assert run.returncode == 2 and run.stderr == ""
    report = json.loads(run.stdout)
    assert report["ok"] is False and len(report["problems"]) >= 2 and any("surprise" in p for p in report["problems"])


def test_schema_accepts_the_shipped_and_test_configs_and_refuses_what_the_loader_refuses(gateway, secret_config):
    run = gateway("config", "schema")
    assert run.returncode == 0 and run.stderr == ""
    schema = json.loads(run.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and "source" not in schema["properties"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in (ROOT / "examples" / "quickstart.yaml", secret_config):
        document = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(document)), path
    for wrong in ({"models": {"m": {"versions": {"v": {"upstream": "http://x"}}}}, "surprise": 1},  # unknown key
                  {"models": {}},  # no model
                  {"models": {"m": {"versions": {"v": {"upstream": "http://x"}}}}, "timeouts": {"read": "soon"}},
                  {"models": {"m": {"versions": {"v": {"upstream": "http://x"}}}}, "listen": {"port": "eighty"}}):
        assert list(validator.iter_errors(wrong)), wrong
