"""Round trips with the reference tool `model_signing`: its bundles verify here, ours there."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gateway.integrity import sign_model, verify_model

from .conftest import load_bundle, statement_of

model_signing = pytest.importorskip("model_signing")

# (our hash name, the tool's name for it, shard size or None for the files serialisation)
HASHINGS = [("sha256", "sha256", None), ("sha256", "sha256", 100_000), ("blake2b", "blake2", None), ("blake2b", "blake2", 65_536)]
CASES = [(curve, *h) for curve in ("p256", "p384", "p521") for h in HASHINGS]


def tool_hashing(tool_alg: str, shard: int | None):
    """The tool's hashing config. Explicit: its guessing fails on blake2b and float shard sizes."""
    config = model_signing.hashing.Config()
    if shard:
        return config.use_shard_serialization(hashing_algorithm=tool_alg, shard_size=shard)
    return config.use_file_serialization(hashing_algorithm=tool_alg)


def tool_verify(model: Path, sig: Path, pub: Path, tool_alg: str, shard: int | None) -> None:
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).set_hashing_config(tool_hashing(tool_alg, shard)).verify(model, sig)


@pytest.mark.parametrize(("curve", "alg", "tool_alg", "shard"), CASES)
def test_our_bundle_verifies_with_model_signing(small_model: Path, ec_keys, tmp_path: Path, curve: str, alg: str, tool_alg: str, shard: int | None) -> None:
    priv, pub = ec_keys[curve]
    sig = tmp_path / "ours.sig"
    result = sign_model(small_model, priv, signature_path=sig, hash_algorithm=alg, shard_size=shard)
    assert result.serialization == ("shards" if shard else "files")
    tool_verify(small_model, sig, pub, tool_alg, shard)  # raises ValueError when invalid
    (small_model / "config.json").write_text('{"layers": 3}\n')
    with pytest.raises(ValueError):
        tool_verify(small_model, sig, pub, tool_alg, shard)  # and the tool does see tampering


@pytest.mark.parametrize(("curve", "alg", "tool_alg", "shard"), CASES)
def test_model_signing_bundle_verifies_here(small_model: Path, ec_keys, tmp_path: Path, curve: str, alg: str, tool_alg: str, shard: int | None) -> None:
    priv, pub = ec_keys[curve]
    sig = tmp_path / "tool.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(tool_hashing(tool_alg, shard)).sign(small_model, sig)
    report = verify_model(small_model, signature_path=sig, public_key_path=pub)
    assert report.valid, (report.problems, report.differences)
    assert report.hash_algorithm == alg and report.shard_size == shard
    ours = sign_model(small_model, priv, signature_path=tmp_path / "ours.sig", hash_algorithm=alg, shard_size=shard)
    assert report.root_digest == ours.root_digest  # same resources, same order
    (small_model / "weights.bin").write_bytes(b"tampered")
    assert not verify_model(small_model, signature_path=sig, public_key_path=pub).valid


def test_model_signing_blake3_bundle_verifies_here(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    sig = tmp_path / "tool.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(tool_hashing("blake3", None)).sign(small_model, sig)
    assert verify_model(small_model, signature_path=sig, public_key_path=pub).valid
    ours = tmp_path / "ours.sig"
    sign_model(small_model, priv, signature_path=ours, hash_algorithm="blake3")
    tool_verify(small_model, ours, pub, "blake3", None)


def test_tool_shard_size_is_a_float_and_accepted(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    sig = tmp_path / "tool.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(tool_hashing("sha256", 100_000)).sign(small_model, sig)
    assert statement_of(sig)["predicate"]["serialization"]["shard_size"] == 100_000.0
    assert isinstance(statement_of(sig)["predicate"]["serialization"]["shard_size"], float)
    assert verify_model(small_model, signature_path=sig, public_key_path=pub).valid


def test_our_integer_shard_size_lets_the_tool_guess_its_config(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    sig = tmp_path / "ours.sig"
    sign_model(small_model, priv, signature_path=sig, shard_size=100_000)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(small_model, sig)


def test_tool_embedded_signature_and_ours_both_ignore_model_sig(small_model: Path, ec_keys) -> None:
    priv, pub = ec_keys["p384"]
    sign_model(small_model, priv)  # default: small_model/model.sig
    assert "model.sig" in statement_of(small_model / "model.sig")["predicate"]["serialization"]["ignore_paths"]
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(small_model, small_model / "model.sig")
    assert verify_model(small_model, signature_path=small_model / "model.sig", public_key_path=pub).valid


def test_single_file_model_round_trip(tmp_path: Path, ec_keys) -> None:
    priv, pub = ec_keys["p256"]
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x01" * 5000)
    result = sign_model(model, priv)
    assert Path(result.signature_path) == tmp_path / "model.safetensors.sig"
    assert [r["name"] for r in statement_of(Path(result.signature_path))["predicate"]["resources"]] == ["."]
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, result.signature_path)
    tool_sig = tmp_path / "tool.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=priv).sign(model, tool_sig)
    assert verify_model(model, signature_path=tool_sig, public_key_path=pub).valid


def test_pre_1_1_bundle_with_raw_public_key(small_model: Path, ec_keys, tmp_path: Path) -> None:
    """Bundles before model_signing 1.1 carry `rawBytes` (base64 PEM) and no hint."""
    priv, pub = ec_keys["p256"]
    sig = tmp_path / "tool.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=priv).sign(small_model, sig)
    bundle = load_bundle(sig)
    bundle["verificationMaterial"]["publicKey"] = {"rawBytes": base64.b64encode(pub.read_bytes()).decode(), "keyDetails": "PKIX_ECDSA_P256_SHA_256"}
    old = tmp_path / "old.sig"
    old.write_text(json.dumps(bundle))
    assert verify_model(small_model, signature_path=old, public_key_path=pub).valid
    other_pub = ec_keys["p384"][1]
    bundle["verificationMaterial"]["publicKey"]["rawBytes"] = base64.b64encode(other_pub.read_bytes()).decode()
    old.write_text(json.dumps(bundle))
    report = verify_model(small_model, signature_path=old, public_key_path=pub)
    assert not report.valid and any("rawBytes" in p for p in report.problems)
