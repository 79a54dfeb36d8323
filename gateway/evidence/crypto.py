"""Keys: AES-256-GCM for bodies at rest, Ed25519 for checkpoints.

Bodies are sealed into a small JSON envelope that becomes part of the record,
so the Merkle leaf covers the ciphertext and verification never needs the
key. The associated data binds each ciphertext to its leaf index and body
name: a ciphertext moved to another record or slot no longer decrypts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALG = "A256GCM"


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def default_key_id(key: bytes) -> str:
    """A stable, non-secret name for a key: 16 hex digits of SHA-256 over a labelled key."""
    return hashlib.sha256(b"oversight-gateway evidence key id\x00" + key).hexdigest()[:16]


class NoncePool:
    """Random 96-bit GCM nonces, drawn from the OS CSPRNG 4 KiB at a time.

    One getrandom() per body costs a few microseconds on the request path;
    slicing a pooled buffer keeps the nonces just as random and never reused.
    Not thread-safe: the log calls it under its append lock.
    """

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk - chunk % 12
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        if self._pos + 12 > len(self._buf):
            self._buf, self._pos = os.urandom(self._chunk), 0
        nonce = self._buf[self._pos:self._pos + 12]
        self._pos += 12
        return nonce


class BodyCipher:
    """Seals bodies with the current key; opens them with any key it knows by id."""

    def __init__(self, key: bytes | None, key_id: str | None, old_keys: Mapping[str, bytes] | None = None) -> None:
        self._nonces = NoncePool()
        self._aead: dict[str, AESGCM] = {}
        for kid, k in (old_keys or {}).items():
            self._aead[kid] = AESGCM(_check_key(k))
        self.key_id: str | None = None
        if key is not None:
            self.key_id = key_id or default_key_id(key)
            self._aead[self.key_id] = AESGCM(_check_key(key))

    def set_key(self, key: bytes, key_id: str | None) -> str:
        self.key_id = key_id or default_key_id(key)
        self._aead[self.key_id] = AESGCM(_check_key(key))
        return self.key_id

    def seal(self, index: int, bodies: Mapping[str, bytes]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for name, data in bodies.items():
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"body {name!r} must be bytes")
            if self.key_id is None:
                out[name] = {"b64": b64(bytes(data))}
                continue
            nonce = self._nonces.take()
            ct = self._aead[self.key_id].encrypt(nonce, bytes(data), _aad(index, name))
            out[name] = {"alg": ALG, "kid": self.key_id, "iv": b64(nonce), "ct": b64(ct)}
        return out

    def open_record(self, index: int, leaf: bytes) -> dict:
        """A leaf as its record, with the bodies this cipher has a key for opened to bytes."""
        record = json.loads(leaf)
        if isinstance(record.get("bodies"), dict):
            record["bodies"] = self.open(index, record["bodies"])
        return record

    def open(self, index: int, sealed: Mapping[str, object]) -> dict[str, object]:
        """Decode each body to bytes; one whose key is unknown stays as its envelope."""
        out: dict[str, object] = {}
        for name, env in sealed.items():
            out[name] = self._open_one(index, name, env)
        return out

    def _open_one(self, index: int, name: str, env: object) -> object:
        if not isinstance(env, dict):
            return env
        if "b64" in env:
            return unb64(env["b64"])
        aead = self._aead.get(env.get("kid", ""))
        if aead is None or env.get("alg") != ALG:
            return env
        try:
            return aead.decrypt(unb64(env["iv"]), unb64(env["ct"]), _aad(index, name))
        except (InvalidTag, ValueError, KeyError) as exc:
            raise ValueError(f"body {name!r} of record {index} does not decrypt: {type(exc).__name__}") from None


def _aad(index: int, name: str) -> bytes:
    return b"oversight-gateway evidence body\x00%d\x00" % index + name.encode()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise ValueError("an evidence encryption key must be 32 bytes (AES-256)")
    return bytes(key)


# --- Ed25519 checkpoint keys ---------------------------------------------------------------

def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_keypair(key: Ed25519PrivateKey, private_path: Path, public_path: Path, *, force: bool = False) -> None:
    """Private key as PKCS#8 PEM created 0600 (never world-readable, not even briefly)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(private_path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
    finally:
        os.close(fd)
    public_path = Path(public_path)
    if public_path.exists() and not force:
        raise FileExistsError(f"{public_path} exists")
    public_path.write_bytes(public_pem(key.public_key()))


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_keys(data: bytes) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM bundle (a log that rotated keys stores several)."""
    keys = []
    for block in data.split(b"-----END PUBLIC KEY-----"):
        if b"-----BEGIN PUBLIC KEY-----" in block:
            try:
                key = serialization.load_pem_public_key(block + b"-----END PUBLIC KEY-----\n")
            except UnsupportedAlgorithm:  # a key type this build cannot even load is not Ed25519 either
                raise ValueError("not an Ed25519 public key (an unsupported key type)") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            keys.append(key)
    if not keys:
        raise ValueError("no PEM public key found")
    return keys


def signed_by(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    """Whether any of `keys` made `signature` over `message`."""
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def load_public_key(path: Path) -> Ed25519PublicKey:
    keys = load_public_keys(Path(path).read_bytes())
    if len(keys) != 1:
        raise ValueError(f"{path}: expected one public key, found {len(keys)}")
    return keys[0]
