"""Config files are bounded and checked whole: what `config check` accepts, `serve` starts.

A file is read only up to a size, walked only to a depth and a number of values (YAML
aliases counted as written out), and every header the gateway would send is checked as
it would go on the wire. Each refusal is one `error:` line and exit 2, from `config check`
and from `serve` alike, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.support import write_config

UPSTREAM = "http://127.0.0.1:9"  # never called: checking a file does no network I/O


def _config(tmp_path: Path, version: dict | None = None, **kwargs) -> Path:
    return write_config(tmp_path, {"demo": {"v1": {"upstream": UPSTREAM, **(version or {})}}}, **kwargs)


def _check(path: Path, capsys) -> tuple[int, list[str]]:
    code = main(["config", "check", str(path)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def _serve(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_a_file_nested_deeper_than_python_can_recurse_is_one_error_line(tmp_path, capsys):
    path = _config(tmp_path)
    path.write_text(path.read_text() + "deep: " + "[" * 20_000 + "]" * 20_000 + "\n")
    code, err = _check(path, capsys)
    assert code == 2
    assert err == [f"error: {path}: nested more than 32 levels deep"]


def test_a_file_nested_deeper_than_the_cap_names_where(tmp_path, capsys):
    path = _config(tmp_path)
    path.write_text(path.read_text() + "deep: " + "[" * 40 + "]" * 40 + "\n")
    code, err = _check(path, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {path}: deep") and "nested more than 32 levels deep" in err[0]


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = _config(tmp_path)
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")  # 9**10 values once expanded
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: more than 100000 values once YAML aliases are expanded"


def test_a_file_larger_than_the_cap_is_not_read(tmp_path, capsys):
    path = _config(tmp_path)
    path.write_text(path.read_text() + ("# padding\n" * 110_000))
    code, err = _check(path, capsys)
    assert code == 2
    assert err == [f"error: {path}: the file is larger than 1048576 bytes"]


@pytest.mark.parametrize("value, problem", [
    ("Bearer ключ", "the value is not latin-1 text"),
    ("x\r\nX-Injected: 1", "the value holds a CR, LF or NUL character"),
    ("x\nX-Injected: 1", "the value holds a CR, LF or NUL character"),
    ("x\x00y", "the value holds a CR, LF or NUL character"),
])
def test_a_version_header_value_that_cannot_go_on_the_wire_is_refused(tmp_path, capsys, value, problem):
    path = _config(tmp_path, {"headers": {"authorization": value}})
    code, err = _check(path, capsys)
    assert code == 2
    assert err == [f"error: {path}: models.demo.versions.v1.headers: header authorization: {problem}"
                   + (", which would end the header" if "CR" in problem else
                      " (header values go on the wire as bytes)")]
    assert value not in "\n".join(err)  # header values are credentials: never echoed


def test_a_header_value_is_checked_after_environment_interpolation(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEMO_KEY", "sk-1\r\nX-Injected: 1")
    path = _config(tmp_path, {"headers": {"x-api-key": "${DEMO_KEY}"}})
    code, err = _check(path, capsys)
    assert code == 2 and len(err) == 1
    assert "models.demo.versions.v1.headers: header x-api-key: the value holds a CR, LF or NUL character" in err[0]
    assert "sk-1" not in err[0]


@pytest.mark.parametrize("name", ["x api", "x:y", "", "ключ", "x\r\ny"])
def test_a_header_name_must_be_an_http_field_name(tmp_path, capsys, name):
    path = _config(tmp_path, {"headers": {name: "v"}})
    code, err = _check(path, capsys)
    assert code == 2 and len(err) == 1
    assert f"models.demo.versions.v1.headers: header name {name!r} is not an HTTP field name" in err[0]


def test_webhook_headers_are_checked_like_version_headers(tmp_path, capsys):
    path = _config(tmp_path, extra={"notifications": [
        {"name": "oncall", "url": "https://hooks.example/x", "headers": {"authorization": "Bearer a\nb"}}]})
    code, err = _check(path, capsys)
    assert code == 2
    assert err == [f"error: {path}: notifications[0].headers: header authorization: "
                   "the value holds a CR, LF or NUL character, which would end the header"]


def test_serve_refuses_a_non_latin1_header_in_one_line_not_a_traceback(tmp_path):
    path = _config(tmp_path, {"headers": {"authorization": "Bearer ключ"}})
    result = _serve(path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: {path}: models.demo.versions.v1.headers: header authorization: "
                                     "the value is not latin-1 text (header values go on the wire as bytes)")


def test_serve_refuses_a_line_break_in_a_header_from_the_environment(tmp_path):
    path = _config(tmp_path, {"headers": {"x-api-key": "${DEMO_KEY}"}})
    result = _serve(path, {"DEMO_KEY": "sk\r\nX-Injected: 1"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {path}: models.demo.versions.v1.headers: header x-api-key: "
                                     "the value holds a CR, LF or NUL character, which would end the header")


def test_config_check_refuses_tls_files_that_serve_cannot_load(tmp_path, capsys):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    path = write_config(tmp_path, {"demo": {"v1": {"upstream": "https://127.0.0.1:9", "tls": {"ca_bundle": str(not_pem)}}}})
    code, err = _check(path, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {path}: models.demo.versions.v1.tls: cannot use the TLS files: ")
    result = _serve(path)
    assert result.returncode == 2 and result.stderr.strip() == err[0]


def test_config_check_refuses_a_notification_template_serve_cannot_load(tmp_path, capsys):
    path = _config(tmp_path, policy={"notifications": {"template": "no-such-template.txt.j2"}})
    code, err = _check(path, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'gateway-policy.yaml'}: notifications.template: cannot use it: "
                             "TemplateNotFound: 'no-such-template.txt.j2' not found")


def test_a_good_file_still_passes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEMO_KEY", "sk-live-1")
    path = _config(tmp_path, {"headers": {"authorization": "Bearer ${DEMO_KEY}", "x-trace!#$%&'*+.^_`|~": "café"}})
    code, _ = _check(path, capsys)
    assert code == 0
