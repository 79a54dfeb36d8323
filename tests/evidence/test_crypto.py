"""Key files: anything that is not an Ed25519 public key is refused as such, never a crash."""

from __future__ import annotations

import base64

import pytest

from gateway.cli import main
from gateway.evidence import load_public_keys


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body


def _unsupported_curve_key() -> bytes:
    """An EC public key on a curve no cryptography build loads (it raises UnsupportedAlgorithm)."""
    algorithm = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d0201")) + _tlv(0x06, bytes.fromhex("2b0601040182370101")))
    spki = _tlv(0x30, algorithm + _tlv(0x03, b"\x00\x04" + bytes(64)))
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(spki) + b"-----END PUBLIC KEY-----\n"


def test_a_key_of_an_unsupported_type_is_not_an_ed25519_key():
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        load_public_keys(_unsupported_curve_key())


def test_verify_bundle_with_such_a_key_is_one_line_and_exit_2(tmp_path, capsys):
    key = tmp_path / "odd.pem"
    key.write_bytes(_unsupported_curve_key())
    code = main(["evidence", "verify-bundle", str(tmp_path / "missing.tar.gz"), "--key", str(key)])
    err = capsys.readouterr().err
    assert code == 2 and "not an Ed25519 public key" in err and "Traceback" not in err
