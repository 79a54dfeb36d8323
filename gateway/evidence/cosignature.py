"""Witness cosignatures: C2SP tlog-cosignature/v1 over another log's checkpoints.

A witness that has checked a checkpoint for consistency with everything it saw of that
log before signs

    cosignature/v1
    time <unix seconds>
    <the checkpoint body, verbatim>

and adds one signed-note line to the checkpoint's note:

    — <witness name> base64(key id[4] || timestamp[8, big endian] || Ed25519 signature[64])

with key id = SHA-256(name || LF || 0x04 || public key)[:4]. A log's own key cannot make
a witness's line, so a log rewritten and re-signed with its own key no longer matches
what its witnesses cosigned (see `WitnessLog` for where a witness keeps its lines).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .checkpoints import SIG_PREFIX, Checkpoint, parse_note, split_signature_line
from .crypto import raw_public
from .errors import CheckpointError

COSIGNATURE_ALG = b"\x04"
_HEADER = "cosignature/v1\ntime {}\n"


def witness_key_hash(name: str, public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + COSIGNATURE_ALG + raw_public(public)).digest()[:4]


def witness_name(public: Ed25519PublicKey) -> str:
    """A witness's name, derived from its key so that it stays one identity across restarts."""
    return f"oversight-gateway/witness/{hashlib.sha256(raw_public(public)).hexdigest()[:16]}"


def _message(cp: Checkpoint, timestamp: int) -> bytes:
    return (_HEADER.format(timestamp) + cp.body).encode()


@dataclass(frozen=True)
class Cosignature:
    name: str
    key_hash: bytes
    timestamp: int
    signature: bytes

    def line(self) -> str:
        blob = self.key_hash + struct.pack(">Q", self.timestamp) + self.signature
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"

    def verifies(self, cp: Checkpoint, key: Ed25519PublicKey) -> bool:
        """True if this is `key`'s cosignature over `cp` under this name."""
        if self.key_hash != witness_key_hash(self.name, key):
            return False
        try:
            key.verify(self.signature, _message(cp, self.timestamp))
            return True
        except InvalidSignature:
            return False


def cosign(cp: Checkpoint, key: Ed25519PrivateKey, name: str, timestamp: int) -> Cosignature:
    public = key.public_key()
    return Cosignature(name, witness_key_hash(name, public), timestamp, key.sign(_message(cp, timestamp)))


@dataclass(frozen=True)
class Witnessed:
    """A checkpoint with the cosignatures a note carries (the log's own signatures stay on the checkpoint)."""

    checkpoint: Checkpoint
    cosignatures: tuple[Cosignature, ...]

    def note(self) -> str:
        return self.checkpoint.note() + "".join(c.line() for c in self.cosignatures)


def parse_witnessed(text: str) -> Witnessed:
    """A signed note whose signature lines are the log's (68-byte blobs) and witnesses' (76-byte blobs)."""
    body, sep, sigs = text.partition("\n\n")
    if not sep:
        raise CheckpointError("no blank line between checkpoint body and signatures")
    own: list[str] = []
    cosignatures: list[Cosignature] = []
    for line in sigs.splitlines():
        if not line:
            continue
        cosig = _parse_cosignature(line)
        if cosig is None:
            own.append(line + "\n")
        else:
            cosignatures.append(cosig)
    return Witnessed(parse_note(body + "\n\n" + "".join(own)), tuple(cosignatures))


def _parse_cosignature(line: str) -> Cosignature | None:
    """The line as a cosignature, or None when it is some other signature line."""
    name, raw = split_signature_line(line)
    if len(raw) != 4 + 8 + 64:
        return None
    if not name:
        raise CheckpointError("malformed cosignature line")
    (timestamp,) = struct.unpack(">Q", raw[4:12])
    return Cosignature(name, raw[:4], timestamp, raw[12:])
