"""ECDSA keys as the OMS key method uses them: P-256/384/521, hint, DSSE signatures.

The curve fixes the hash (P-256 SHA-256, P-384 SHA-384, P-521 SHA-512), as in the
Sigstore key details the reference tool follows. The key hint written in the
bundle is the hex SHA-256 of the PEM SubjectPublicKeyInfo, newline included.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.integrity.errors import IntegrityInputError

CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
CURVE_LABELS = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def describe_key(key: object) -> str:
    """A short human name for any key object, for error messages."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"ECDSA {CURVE_LABELS.get(key.curve.name, key.curve.name)}"
    name = type(key).__name__.replace("_", "")
    for prefix in ("RSA", "Ed25519", "Ed448", "DSA", "X25519", "X448", "DH"):
        if name.startswith(prefix):
            return prefix
    return name


def unsupported_key(key: object) -> str | None:
    """Why `key` cannot be used with OMS, or None when it is a supported ECDSA key."""
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"a {describe_key(key)} key; OMS keys are ECDSA P-256, P-384 or P-521"
    if key.curve.name not in CURVE_HASHES:
        return f"an ECDSA key on curve {key.curve.name}; OMS keys are ECDSA P-256, P-384 or P-521"
    return None


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise IntegrityInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """The signing key from a PEM file (unencrypted), checked to be a supported curve."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise IntegrityInputError(f"private key {path} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " (it is a public key)" if b"PUBLIC KEY-----" in data else ""
        raise IntegrityInputError(f"{path} is not a PEM private key{hint}") from None
    why = unsupported_key(key)
    if why:
        raise IntegrityInputError(f"private key {path} is {why}")
    return key  # type: ignore[return-value]


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """The verification key from a PEM (or DER) file, checked to be a supported curve."""
    data = _read(path, "public key")
    key = parse_public_key(data)
    if key is None:
        hint = " (it is a private key; give the public half)" if b"PRIVATE KEY-----" in data else ""
        raise IntegrityInputError(f"{path} is not a PEM public key{hint}")
    why = unsupported_key(key)
    if why:
        raise IntegrityInputError(f"public key {path} is {why}")
    return key  # type: ignore[return-value]


def parse_public_key(data: bytes) -> object | None:
    """Any public key from PEM or DER bytes, or None."""
    for loader in (serialization.load_pem_public_key, serialization.load_der_public_key):
        try:
            return loader(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    return None


def pem_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """The bundle's `publicKey.hint`: hex SHA-256 of the PEM SubjectPublicKeyInfo."""
    return hashlib.sha256(pem_bytes(key)).hexdigest()


def same_key(a: object, b: object) -> bool:
    """Whether two public keys are the same key (compared by their DER encoding)."""
    enc, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt)  # type: ignore[attr-defined]
    except (AttributeError, ValueError, TypeError):
        return False


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """DER ECDSA signature of `message` with the hash the curve calls for."""
    return key.sign(message, ec.ECDSA(CURVE_HASHES[key.curve.name]()))


def verify(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` (DER ECDSA) over `message` verifies with `key`."""
    try:
        key.verify(signature, message, ec.ECDSA(CURVE_HASHES[key.curve.name]()))
    except (InvalidSignature, ValueError):
        return False
    return True
