"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed-note envelopes.

A checkpoint reads, verbatim:

    oversight-gateway/evidence/3f2c...      <- origin (also the signing key's name)
    1000                                    <- tree size
    XdnaeacGWamrVZy3Ad7Zoqudgjqtl0lgz+Nw7/RgQyg=   <- base64 RFC 9162 root hash
    time 1712345678.123456                  <- extension line: when it was signed
                                            <- blank line
    — oversight-gateway/evidence/3f2c... <base64(key hash[4] || Ed25519 signature[64])>

so any signed-note/tlog-checkpoint tool (e.g. Go's golang.org/x/mod/sumdb/note)
can check it. The history lives in `checkpoints.log`: those notes one after
another, each followed by one extra blank line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .crypto import raw_public
from .errors import CheckpointError

SIG_PREFIX = "\u2014 "  # em dash + space, as signed-note specifies
ED25519_ALG = b"\x01"


def key_hash(name: str, public: Ed25519PublicKey) -> bytes:
    """signed-note key ID: SHA-256(name || LF || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + raw_public(public)).digest()[:4]


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_hash + self.signature).decode()}\n"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: float
    signatures: tuple[NoteSignature, ...] = field(default=())

    def __post_init__(self) -> None:
        # The note carries microseconds; keep the object equal to what parsing the note gives back.
        object.__setattr__(self, "time", float(f"{self.time:.6f}"))

    @property
    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\ntime {self.time:.6f}\n"

    def note(self) -> str:
        return self.body + "\n" + "".join(s.line() for s in self.signatures)

    def signed(self, key: Ed25519PrivateKey) -> "Checkpoint":
        sig = NoteSignature(self.origin, key_hash(self.origin, key.public_key()), key.sign(self.body.encode()))
        return Checkpoint(self.origin, self.size, self.root, self.time, self.signatures + (sig,))

    def verified_by(self, keys: list[Ed25519PublicKey]) -> bool:
        """True if some signature is a valid Ed25519 signature by one of `keys` under its name."""
        message = self.body.encode()
        for sig in self.signatures:
            for key in keys:
                if sig.key_hash != key_hash(sig.name, key):
                    continue
                try:
                    key.verify(sig.signature, message)
                    return True
                except InvalidSignature:
                    continue
        return False


def parse_note(text: str) -> Checkpoint:
    body, sep, sigs = text.partition("\n\n")
    if not sep:
        raise CheckpointError("no blank line between checkpoint body and signatures")
    lines = body.split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint body needs origin, size and root lines")
    origin, size_text, root_text, *ext = lines
    if not size_text.isdigit():
        raise CheckpointError(f"bad tree size {size_text!r}")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckpointError("root hash is not base64") from None
    if len(root) != 32:
        raise CheckpointError("root hash is not 32 bytes")
    stamp = [e for e in ext if e.startswith("time ")]
    try:
        when = float(stamp[0][5:]) if stamp else 0.0
    except ValueError:
        raise CheckpointError("bad time line") from None
    cp = Checkpoint(origin, int(size_text), root, when, tuple(_parse_sig(s) for s in sigs.splitlines() if s))
    if cp.body != body + "\n":
        raise CheckpointError("checkpoint body is not in canonical form")
    return cp


def split_signature_line(line: str) -> tuple[str, bytes]:
    """A signed-note signature line's key name and decoded blob (whatever kind of signature it holds)."""
    if not line.startswith(SIG_PREFIX):
        raise CheckpointError("signature line does not start with an em dash")
    name, _, blob = line[len(SIG_PREFIX):].rpartition(" ")
    try:
        return name, base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise CheckpointError("signature is not base64") from None


def _parse_sig(line: str) -> NoteSignature:
    name, raw = split_signature_line(line)
    if not name or len(raw) != 4 + 64:
        raise CheckpointError("malformed signature line")
    return NoteSignature(name, raw[:4], raw[4:])


@dataclass(frozen=True)
class Entry:
    """One note in `checkpoints.log`: its position, and the checkpoint or why it does not parse."""

    number: int
    offset: int
    checkpoint: Checkpoint | None
    error: str | None = None


def parse_log(data: bytes) -> tuple[list[Entry], int, bool]:
    """Split `checkpoints.log` into notes.

    Returns (entries, end, torn): `end` is where well-formed notes stop; `torn` is
    true when what follows is only the beginning of a note, as a crash
    mid-append leaves it, and false when it is damage.
    """
    lines = data.splitlines(keepends=True)
    entries: list[Entry] = []
    pos = i = 0
    while i < len(lines):
        j = _skip(lines, i, lambda ln: ln != b"\n")
        if j == len(lines) or not lines[j].endswith(b"\n"):
            return entries, pos, True
        k = _skip(lines, j + 1, lambda ln: ln.startswith(_SIG))
        if k == len(lines) or (not lines[k].endswith(b"\n") and (lines[k].startswith(_SIG) or _SIG.startswith(lines[k]))):
            return entries, pos, True
        if lines[k] != b"\n":
            return entries, pos, False
        raw = b"".join(lines[i:k])
        try:
            entries.append(Entry(len(entries), pos, parse_note(raw.decode())))
        except (CheckpointError, UnicodeDecodeError) as exc:
            entries.append(Entry(len(entries), pos, None, str(exc)))
        pos += len(raw) + 1
        i = k + 1
    return entries, pos, True


_SIG = SIG_PREFIX.encode()


def _skip(lines: list[bytes], i: int, keep: Callable[[bytes], bool]) -> int:
    """Index of the first line from i that is unterminated or fails `keep`."""
    while i < len(lines) and lines[i].endswith(b"\n") and keep(lines[i]):
        i += 1
    return i


class CheckpointLog:
    """Append-only `checkpoints.log`; each append is fsynced before it counts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def append(self, cp: Checkpoint) -> None:
        data = (cp.note() + "\n").encode()
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_log(path: Path) -> tuple[list[Entry], int, bool]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0, True
    return parse_log(data)
