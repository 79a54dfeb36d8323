"""`gateway model sign|verify`: exit codes 0/1/2, the human report, `--json`, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

from .conftest import VECTOR_MODEL, VECTOR_PUB, VECTOR_ROOT_DIGEST, VECTOR_SIG

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["model", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_verify_valid_vector_exits_0(capsys) -> None:
    code, out, _ = run(capsys, "verify", VECTOR_MODEL, "--signature", VECTOR_SIG, "--key", VECTOR_PUB)
    assert code == 0
    assert out.startswith("VALID") and VECTOR_ROOT_DIGEST in out


def test_verify_default_signature_is_inside_the_folder(capsys, tmp_path: Path, small_model: Path, ec_keys) -> None:
    priv, pub = ec_keys["p256"]
    assert run(capsys, "sign", small_model, "--key", priv)[0] == 0
    assert (small_model / "model.sig").is_file()
    assert run(capsys, "verify", small_model, "--key", pub)[0] == 0


def test_verify_invalid_names_every_file_and_exits_1(capsys, vector_copy: Path) -> None:
    (vector_copy / "weights.bin").write_bytes(b"changed")
    (vector_copy / "sub" / "empty.bin").unlink()
    (vector_copy / "extra.txt").write_text("new")
    code, out, _ = run(capsys, "verify", vector_copy, "--signature", VECTOR_SIG, "--key", VECTOR_PUB)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("INVALID")
    assert [line.split() for line in lines[1:]] == [["extra", "extra.txt"], ["missing", "sub/empty.bin"], ["changed", "weights.bin"]]


def test_verify_json_report(capsys, vector_copy: Path) -> None:
    (vector_copy / "config.json").write_text("{}")
    code, out, _ = run(capsys, "verify", vector_copy, "--signature", VECTOR_SIG, "--key", VECTOR_PUB, "--json")
    report = json.loads(out)
    assert code == 1 and report["valid"] is False
    assert report["differences"] == [{"path": "config.json", "kind": "changed"}]
    assert {"root_digest", "signer", "hash_algorithm", "serialization", "problems"} <= report.keys()
    code, out, _ = run(capsys, "verify", VECTOR_MODEL, "--signature", VECTOR_SIG, "--key", VECTOR_PUB, "--json")
    assert code == 0 and json.loads(out)["valid"] is True and json.loads(out)["root_digest"] == VECTOR_ROOT_DIGEST


def test_verify_bad_bundle_is_a_problem_line_exit_1(capsys, tmp_path: Path) -> None:
    sig = tmp_path / "bad.sig"
    sig.write_text(VECTOR_SIG.read_text()[:100])
    code, out, _ = run(capsys, "verify", VECTOR_MODEL, "--signature", sig, "--key", VECTOR_PUB)
    assert code == 1 and "problem: signature bundle is not valid JSON" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["verify", VECTOR_MODEL, "--signature", "/nonexistent.sig", "--key", VECTOR_PUB], "cannot read signature"),
        (["verify", VECTOR_MODEL, "--signature", VECTOR_SIG, "--key", "/nonexistent.pem"], "cannot read public key"),
        (["verify", VECTOR_MODEL, "--signature", VECTOR_SIG], "one of the arguments --key --cert-root is required"),
        (["verify", VECTOR_MODEL, "--signature", VECTOR_SIG, "--key", VECTOR_PUB, "--cert-root", VECTOR_PUB], "not allowed with"),
        (["verify", "/nonexistent-model", "--signature", VECTOR_SIG, "--key", VECTOR_PUB], "does not exist"),
        (["sign", VECTOR_MODEL, "--key", VECTOR_PUB, "--signature", "/tmp/x.sig"], "not a PEM private key"),
        (["sign", VECTOR_MODEL, "--key", VECTOR_PUB, "--hash", "md5"], "invalid choice"),
        (["sign", VECTOR_MODEL, "--key", VECTOR_PUB, "--shard-size", "-1"], "positive"),
        ([], "required"),
    ],
)
def test_usage_and_unreadable_input_exit_2_with_one_line(capsys, argv: list, expected: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error:") and expected in err and err.count("\n") == 1


def test_sign_then_verify_shards_blake2b(capsys, tmp_path: Path, small_model: Path, ec_keys) -> None:
    priv, pub = ec_keys["p521"]
    sig = tmp_path / "m.sig"
    code, out, _ = run(capsys, "sign", small_model, "--key", priv, "--signature", sig, "--hash", "blake2b", "--shard-size", "65536")
    assert code == 0 and f"signature written to {sig}" in out
    code, out, _ = run(capsys, "verify", small_model, "--key", pub, "--signature", sig, "--json")
    report = json.loads(out)
    assert code == 0 and (report["serialization"], report["hash_algorithm"], report["shard_size"]) == ("shards", "blake2b", 65536)


def test_sign_unreadable_model_file_exits_2(capsys, tmp_path: Path, small_model: Path, ec_keys) -> None:
    (small_model / "link").symlink_to(small_model / "config.json")
    code, _, err = run(capsys, "sign", small_model, "--key", ec_keys["p256"][0], "--signature", tmp_path / "m.sig")
    assert code == 2 and "symlink" in err


def _gateway_script() -> str:
    found = shutil.which("gateway") or str(Path(sys.executable).with_name("gateway"))
    assert os.access(found, os.X_OK), "the gateway console script is not installed"
    return found


def test_console_script_subprocess(tmp_path: Path, vector_copy: Path) -> None:
    ok = subprocess.run([_gateway_script(), "model", "verify", str(VECTOR_MODEL), "--signature", str(VECTOR_SIG), "--key", str(VECTOR_PUB)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    (vector_copy / "README.md").write_text("tampered")
    bad = subprocess.run([_gateway_script(), "model", "verify", str(vector_copy), "--signature", str(VECTOR_SIG), "--key", str(VECTOR_PUB)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "changed  README.md" in bad.stdout and "Traceback" not in bad.stderr


CI_SCRIPT = REPO / "scripts" / "ci-verify-model.sh"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _ci_job(*args: str, path: str) -> subprocess.CompletedProcess:
    """The script as a CI job runs it: an environment with the gateway installed, its bin on PATH, nothing else."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(CI_SCRIPT), *args], capture_output=True, text=True, timeout=60, env={**env, "PATH": path},
                          cwd=Path(_gateway_script()).parent)


def test_ci_script_fails_the_pipeline_on_an_invalid_model(vector_copy: Path) -> None:
    job_path = f"{Path(_gateway_script()).parent}:{SYSTEM_PATH}"
    ok = _ci_job(str(vector_copy), str(VECTOR_SIG), str(VECTOR_PUB), path=job_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (vector_copy / "config.json").write_text("{}")
    bad = _ci_job(str(vector_copy), str(VECTOR_SIG), str(VECTOR_PUB), path=job_path)
    assert bad.returncode == 1 and "config.json" in bad.stdout
    usage = _ci_job(path=job_path)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_ci_script_without_an_installed_gateway_says_how_to_install_one(vector_copy: Path) -> None:
    missing = _ci_job(str(vector_copy), str(VECTOR_SIG), str(VECTOR_PUB), path=SYSTEM_PATH)
    assert missing.returncode == 2 and "the gateway command is not on PATH: install the gateway" in missing.stderr
    assert "Traceback" not in missing.stderr
