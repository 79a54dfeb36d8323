"""`gateway evidence keygen|verify`: exit codes 0/1/2 and one-line output."""

from __future__ import annotations

import stat
import subprocess
import sys

from gateway.cli import main
from gateway.evidence.crypto import load_public_key, load_signing_key

from .helpers import fill, frames


def test_keygen_writes_a_0600_private_key_and_a_public_key(tmp_path, capsys):
    prefix = tmp_path / "ev"
    assert main(["evidence", "keygen", "--out", str(prefix)]) == 0
    private, public = tmp_path / "ev.key", tmp_path / "ev.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_signing_key(private).public_key() == load_public_key(public)
    assert b"PRIVATE KEY" not in public.read_bytes()
    assert main(["evidence", "keygen", "--out", str(prefix)]) == 2  # never overwrites silently
    assert "already exists" in capsys.readouterr().err


def test_verify_ok_then_tampered_then_unreadable(tmp_path, capsys):
    assert main(["evidence", "keygen", "--out", str(tmp_path / "k")]) == 0
    key = load_signing_key(tmp_path / "k.key")
    logdir = tmp_path / "log"
    fill(logdir, key, 30)
    capsys.readouterr()

    assert main(["evidence", "verify", str(logdir), "--key", str(tmp_path / "k.pub")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 30 records") and "the given key" in out

    f = frames(logdir)[12]
    data = bytearray(f.path.read_bytes())
    data[f.offset + 8 + 3] ^= 0x01
    f.path.write_bytes(bytes(data))
    assert main(["evidence", "verify", str(logdir), "--key", str(tmp_path / "k.pub")]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"FAILED: record 12 (segment {f.path.name}, offset {f.offset})")

    assert main(["evidence", "verify", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err

    assert main(["evidence", "verify", str(tmp_path)]) == 2  # a directory, but not an evidence log
    assert "not a readable evidence log" in capsys.readouterr().err

    assert main(["evidence", "verify", str(logdir), "--key", str(tmp_path / "k.key")]) == 2
    assert "cannot read public key" in capsys.readouterr().err


def test_console_entry_point_prints_no_traceback(tmp_path):
    (tmp_path / "log.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "gateway", "evidence", "verify", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
