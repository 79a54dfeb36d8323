"""Fixtures for the integrity tests: real files on disk, real keys, no mocks."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.integrity import keys
from gateway.integrity.bundle import PAYLOAD_TYPE, build_bundle, pae
from tests.support import VECTORS

VECTOR_MODEL = VECTORS / "model"
VECTOR_SIG = VECTORS / "sigs" / "p256-files-sha256.sig"
VECTOR_PUB = VECTORS / "keys" / "p256.pub.pem"
VECTOR_ROOT_DIGEST = "2f1e2865c896ea8593ffe0881cbff98e5484484aae0b9163c4beebb3546c120a"
CURVES = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}


def signed_files(model: Path) -> list[str]:
    """The vector model's signed files (all but the top-level .gitattributes)."""
    return sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file() and p.name != ".gitattributes")


def writable_copy(src: Path, dst: Path) -> Path:
    """Copy a (read-only) vector folder and make the copy writable."""
    shutil.copytree(src, dst)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(dst, 0o755)
    return dst


def write_key(folder: Path, name: str, curve: ec.EllipticCurve) -> tuple[Path, Path]:
    """A fresh key pair as PEM files: (private, public)."""
    key = ec.generate_private_key(curve)
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub.write_bytes(keys.pem_bytes(key.public_key()))
    return priv, pub


@pytest.fixture(scope="session")
def ec_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: write_key(folder, name, curve) for name, curve in CURVES.items()}


@pytest.fixture
def vector_copy(tmp_path: Path) -> Path:
    return writable_copy(VECTOR_MODEL, tmp_path / "model")


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    """A small model with nesting, an empty file and a file spanning several shards."""
    model = tmp_path / "small"
    (model / "sub" / "deep").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(300_000))
    (model / "config.json").write_text('{"layers": 2}\n')
    (model / "sub" / "empty.bin").write_bytes(b"")
    (model / "sub" / "deep" / "vocab.txt").write_text("a\nb\nc\n")
    return model


def load_bundle(path: Path) -> dict:
    return json.loads(path.read_text())


def statement_of(path: Path) -> dict:
    return json.loads(base64.b64decode(load_bundle(path)["dsseEnvelope"]["payload"]))


def resign(statement: dict | bytes, private_key: Path, out: Path, *, payload_type: str = PAYLOAD_TYPE) -> Path:
    """Sign any statement (even a bad one) properly, to test checks past the signature."""
    payload = statement if isinstance(statement, bytes) else json.dumps(statement).encode()
    key = keys.load_private_key(private_key)
    bundle = json.loads(build_bundle(payload, keys.sign(key, pae(payload_type, payload)), key_hint=keys.key_hint(key.public_key())))
    bundle["dsseEnvelope"]["payloadType"] = payload_type
    out.write_text(json.dumps(bundle))
    return out
