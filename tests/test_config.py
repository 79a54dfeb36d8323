"""Config files: a file that starts is a file that works; a bad one says what and where."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.configfile import ConfigError
from gateway.policy import load_policy
from tests.support import ROOT

GOOD = """
listen: {host: 127.0.0.1, port: 8080}
store: embedded
policy: POLICY
models:
  demo:
    versions:
      v1: {upstream: "http://127.0.0.1:9000"}
tokens:
  - {id: c1, role: client, sha256: 51628ce88a9ad81017fe75e54da201f2cfe4a9d0d31c48eeb524e0d037759003}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("POLICY", str(ROOT / "policies" / "default.yaml")))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_the_quickstart_config_is_valid():
    config = load_config(ROOT / "examples" / "quickstart.yaml")
    assert config.listen.port == 8080 and "demo" in config.models
    assert {t.role for t in config.tokens} == {"client", "reviewer", "operator", "auditor"}
    assert config.policy == ROOT / "policies" / "default.yaml"


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    config = load_config(_write(tmp_path, GOOD + "data_dir: state\n"))
    assert config.data_dir == tmp_path / "state"


def test_each_problem_is_one_line_naming_file_field_and_expectation(tmp_path):
    path = _write(tmp_path, """
store: postgres://nope
listen: {port: 99999}
modles: {}
models:
  demo:
    active: v9
    versions:
      v1: {upstream: "ftp://x"}
tokens:
  - {id: c1, role: admin, sha256: abc}
""")
    problems = _problems(path)
    text = "\n".join(problems)
    assert all(line.startswith(f"{path}: ") for line in problems)
    assert "listen.port: input should be less than or equal to 65535 (got 99999)" in text
    assert "store: expected 'embedded' or one of redis://, rediss://, unix://, redis+sentinel://, redis+cluster://" in text
    assert "modles: unknown field" in text
    assert "models.demo.versions.v1.upstream: URL scheme should be 'http' or 'https' (got 'ftp://x')" in text
    assert "tokens[0].role: input should be 'client', 'reviewer', 'operator' or 'auditor' (got 'admin')" in text
    assert "tokens[0].sha256: expected 64 hex characters" in text


def test_the_active_version_must_be_one_of_the_versions(tmp_path):
    path = _write(tmp_path, GOOD.replace("    versions:", "    active: v9\n    versions:"))
    assert _problems(path) == [f"{path}: models.demo: active version 'v9' is not one of the versions (v1)"]


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B-Instruct", "org/team/model-v2.1", "demo_1"])
def test_a_model_name_may_hold_slashes_between_segments(tmp_path, name):
    config = load_config(_write(tmp_path, GOOD.replace("  demo:", f"  {name}:")))
    assert name in config.models


@pytest.mark.parametrize("name", ["a//b", "a/", "/a", "a/../b", "a/./b", "..", "a/.hidden", "-x", "a b", "x" * 129])
def test_a_model_name_that_could_climb_a_path_is_refused(tmp_path, name):
    (problem,) = _problems(_write(tmp_path, GOOD.replace("  demo:", f"  '{name}':")))
    assert "models." in problem


def test_a_served_name_is_text_without_quotes_or_control_characters(tmp_path):
    good = GOOD.replace('v1: {upstream: "http://127.0.0.1:9000"}',
                        'v1: {upstream: "http://127.0.0.1:9000", served_name: "meta-llama/Llama-3.1-8B-Instruct"}')
    assert load_config(_write(tmp_path, good)).models["demo"].versions["v1"].served_name == "meta-llama/Llama-3.1-8B-Instruct"
    (problem,) = _problems(_write(tmp_path, good.replace("meta-llama/Llama-3.1-8B-Instruct", 'a\\"b')))
    assert "served_name" in problem


def test_environment_variables_are_interpolated(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-secret")
    path = _write(tmp_path, GOOD.replace('{upstream: "http://127.0.0.1:9000"}',
                                         '{upstream: "http://127.0.0.1:9000", headers: {authorization: "Bearer ${UPSTREAM_KEY}"}}'))
    assert load_config(path).models["demo"].versions["v1"].headers["authorization"] == "Bearer sk-secret"


def test_a_missing_environment_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    path = _write(tmp_path, GOOD.replace("store: embedded", "store: ${NOPE_KEY}"))
    assert _problems(path) == [f"{path}: store: environment variable NOPE_KEY is not set"]
    path = _write(tmp_path, GOOD.replace("store: embedded", "store: ${NOPE_KEY:-embedded}"))
    assert load_config(path).store == "embedded"


def test_yaml_syntax_errors_give_the_line(tmp_path):
    path = _write(tmp_path, "models:\n  demo: [unclosed\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}: line ") and "YAML syntax error" in problem


def test_a_missing_file_is_named(tmp_path):
    assert _problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_a_signed_version_needs_all_three_parts(tmp_path):
    path = _write(tmp_path, GOOD.replace('{upstream: "http://127.0.0.1:9000"}', '{upstream: "http://127.0.0.1:9000", artifact: m}'))
    assert any("missing signature, trust" in p for p in _problems(path))


def test_duplicate_token_ids_are_refused(tmp_path):
    path = _write(tmp_path, GOOD + "  - {id: c1, role: operator, sha256: " + "a" * 64 + "}\n")
    assert any("token id 'c1' is used twice" in p for p in _problems(path))


def test_policy_extends_and_overrides(tmp_path):
    custom = tmp_path / "strict.yaml"
    custom.write_text(f"extends: {ROOT / 'policies' / 'default.yaml'}\nversion: strict-1\n"
                      "oversight: {max_staleness: 500ms}\nmodels: {demo: {confidence_threshold: 0.9, sample_rate: {0: 0.05}}}\n")
    policy = load_policy(custom)
    assert policy.version == "strict-1"
    assert policy.oversight.max_staleness == 0.5
    assert policy.oversight.on_state_loss == 4  # inherited
    demo, other = policy.for_model("demo"), policy.for_model("other")
    assert (demo.confidence_threshold, other.confidence_threshold) == (0.9, 0.8)
    assert (demo.rate_at(0), demo.rate_at(1), other.rate_at(0)) == (0.05, 0.15, 0.02)
    assert policy.digest != load_policy(ROOT / "policies" / "default.yaml").digest


def test_policy_problems_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {ROOT / 'policies' / 'default.yaml'}\noversight: {{on_state_loss: 7, max_staleness: soon}}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(bad)
    text = "\n".join(caught.value.problems)
    assert "oversight.on_state_loss: input should be less than or equal to 4 (got 7)" in text
    assert "oversight.max_staleness: expected a duration such as 2s, 10m or 24h" in text


def test_config_check_command(tmp_path, capsys):
    assert main(["config", "check", str(_write(tmp_path, GOOD))]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    bad = _write(tmp_path, GOOD.replace("port: 8080", "port: eighty"))
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}: listen.port: input should be a valid integer, unable to parse string as an integer (got 'eighty')"]


def test_serve_refuses_an_invalid_config_without_a_traceback(tmp_path):
    bad = _write(tmp_path, GOOD.replace("store: embedded", "store: nowhere"))
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}: store: expected 'embedded' or one of redis://, rediss://, unix://, redis+sentinel://, redis+cluster://"


# defaults resolve against the config file, as written paths do ------------------------------
BARE = """
models:
  demo:
    versions:
      v1: {upstream: "http://127.0.0.1:9000"}
"""


def test_data_dir_defaults_to_data_in_the_config_files_folder_wherever_the_gateway_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_DATA_DIR", raising=False)
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "etc" / "gateway.yaml"
    path.write_text(BARE)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_config(path).data_dir == tmp_path / "etc" / "data"
    assert load_config(Path("..") / "etc" / "gateway.yaml").data_dir.resolve() == tmp_path / "etc" / "data"


def test_gateway_data_dir_is_the_default_data_dir_and_a_data_dir_in_the_file_wins(tmp_path, monkeypatch):
    path = tmp_path / "gateway.yaml"
    path.write_text(BARE)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "var" / "lib" / "gateway"))
    assert load_config(path).data_dir == tmp_path / "var" / "lib" / "gateway"
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setenv("GATEWAY_DATA_DIR", "state")  # an environment variable's path is relative to the working directory
    assert load_config(path).data_dir == tmp_path.parent / "state"
    monkeypatch.setenv("GATEWAY_DATA_DIR", "")
    assert load_config(path).data_dir == tmp_path / "data"
    monkeypatch.setenv("GATEWAY_DATA_DIR", "/elsewhere")
    path.write_text(BARE + "data_dir: mine\n")
    assert load_config(path).data_dir == tmp_path / "mine"


def test_a_config_that_names_no_policy_uses_the_shipped_default_policy(tmp_path):
    from gateway.policies_data import default_policy, shipped_folder

    path = tmp_path / "gateway.yaml"
    path.write_text(BARE)
    config = load_config(path)
    assert config.policy == default_policy()
    # a checkout (the editable install) ships its own policies/, the source of truth
    assert shipped_folder() == ROOT / "policies" and config.policy == ROOT / "policies" / "default.yaml"
    policy = load_policy(config.policy)
    assert policy.version == load_policy(ROOT / "policies" / "default.yaml").version
    assert main(["config", "check", str(path)]) == 0  # the notification template is found beside it too


def test_extends_default_yaml_is_the_shipped_default_unless_a_file_beside_it_wins(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: default.yaml\nversion: mine-1\noversight: {max_staleness: 1s}\n")
    policy = load_policy(mine)
    assert (policy.version, policy.oversight.max_staleness, policy.oversight.on_state_loss) == ("mine-1", 1.0, 4)
    assert policy.folders == (str(tmp_path), str(ROOT / "policies"))  # templates: its own folder's, then the default's
    (tmp_path / "default.yaml").write_text(f"extends: {ROOT / 'policies' / 'default.yaml'}\n"
                                           "version: local-1\noversight: {on_state_loss: 3}\n")
    assert load_policy(mine).oversight.on_state_loss == 3


def test_a_missing_extends_says_what_was_tried_and_what_to_do(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: nowhere.yaml\nversion: mine-1\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(mine)
    assert caught.value.problems == [
        f"{mine}: extends: nowhere.yaml: file not found (tried {tmp_path / 'nowhere.yaml'}, then the policies shipped "
        f"with the gateway); name a policy file relative to this file's folder, an absolute path, or `default.yaml` "
        f"for the shipped default policy"]
    mine.write_text("extends: ../../etc/passwd\nversion: mine-1\n")  # the shipped folder is not a way out
    with pytest.raises(ConfigError, match="file not found"):
        load_policy(mine)


def test_a_missing_policy_file_says_where_relative_paths_start(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(BARE + "policy: policies/mine.yaml\n")
    assert main(["config", "check", str(path)]) == 2
    with pytest.raises(ConfigError) as caught:
        load_policy(load_config(path).policy)
    assert caught.value.problems == [
        f"{tmp_path / 'policies' / 'mine.yaml'}: file not found (a config's `policy:` is relative to the config file's "
        f"folder; leave it out to use the default policy shipped with the gateway)"]
