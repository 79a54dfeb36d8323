"""Self-verifying forensic export: selected records, their proofs and everything needed to check them.

`write_bundle` packs one `.tar.gz`:

    README.txt               how to verify, what each file is
    manifest.json            sha256 and size of every other file, plus a description of the export
    manifest.sig             base64 Ed25519 signature over the exact bytes of manifest.json
    manifest-key.pub         PEM public key of the key that signed the manifest
    checkpoint-keys.pem      the log's checkpoint public keys (its checkpoint-keys.pem)
    checkpoints.txt          signed checkpoint notes: the log's first, the last before the records, the one used
    consistency.json         RFC 9162 consistency proofs between consecutive checkpoints
    records.jsonl            one line per selected leaf, with its inclusion proof against the last checkpoint
    decrypted-bodies.jsonl   the bodies of those records the log could decrypt
    <extras>                 opaque files the caller adds (config, policy, model signatures, ...)

`verify_bundle` needs nothing but this package. It never extracts the archive:
members are read in memory, and unsafe ones (links, devices, `..`, absolute
paths) are refused unread. It checks the manifest signature, every file
against the manifest, every checkpoint signature, consistency between
consecutive checkpoints, and that every record hashes, with its proof, to the
root of the signed checkpoint the bundle names. Without `trusted_keys` the
signatures are checked against keys carried inside the bundle, which proves
integrity but not who made it: whoever can rewrite the bundle can replace
those keys too. Pass the gateway's public key for an independent check.

The decrypted bodies are covered by the manifest signature only: the log
stores them encrypted, so the Merkle proofs cannot vouch for the plaintext
(plain base64 bodies are cross-checked against the leaf).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import itertools
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .checkpoints import Checkpoint, parse_log
from .crypto import load_public_keys, public_pem
from .merkle import leaf_hash, verify_consistency, verify_inclusion

if TYPE_CHECKING:
    from .log import EvidenceLog

FORMAT = "oversight-gateway-evidence-bundle"
VERSION = 1

README = "README.txt"
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.sig"
MANIFEST_KEY = "manifest-key.pub"
CHECKPOINT_KEYS = "checkpoint-keys.pem"
CHECKPOINTS = "checkpoints.txt"
CONSISTENCY = "consistency.json"
RECORDS = "records.jsonl"
BODIES = "decrypted-bodies.jsonl"

# Files the manifest must list (manifest.json and manifest.sig are the two it cannot list).
REQUIRED = (README, MANIFEST_KEY, CHECKPOINT_KEYS, CHECKPOINTS, CONSISTENCY, RECORDS, BODIES)
RESERVED = frozenset((MANIFEST, MANIFEST_SIG) + REQUIRED)
# Members read into memory to be parsed; every other member is only hashed, in chunks.
_PARSED = frozenset((MANIFEST, MANIFEST_SIG, MANIFEST_KEY, CHECKPOINT_KEYS, CHECKPOINTS, CONSISTENCY, RECORDS, BODIES))
_CHUNK = 1 << 20


class BundleError(Exception):
    """Cannot write a bundle, or the file cannot be read as a bundle at all (as opposed to: it fails verification)."""


# ============================================================================ writing


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    sha256: str                 # of the whole .tar.gz, for a chain-of-custody note
    size: int                   # bytes of the .tar.gz
    records: int
    bodies: int                 # records whose bodies are in decrypted-bodies.jsonl
    not_decrypted: tuple[int, ...]  # records with bodies the log could not decrypt (unknown key, damage)
    checkpoint: Checkpoint
    files: tuple[str, ...]      # every member, in archive order


def write_bundle(out_path: Path, log: EvidenceLog, indexes: Iterable[int], *, signing_key: Ed25519PrivateKey,
                 extras: dict[str, bytes], description: dict) -> BundleSummary:
    """Write a bundle of the records at `indexes` to `out_path` (atomically: temp file beside it, then rename).

    Blocking (forces an fsynced checkpoint, reads the log): call it from a worker
    thread. The file is created mode 0600: it holds decrypted bodies. Raises
    BundleError when the log cannot back the bundle (unsigned checkpoint, a record
    removed by retention, a proof that does not check), ValueError or TypeError on bad arguments.
    """
    out_path = Path(out_path)
    wanted = sorted({_index_arg(i) for i in indexes})
    extra_files = {_check_extra_name(name): _check_bytes(name, data) for name, data in extras.items()}
    for name in extra_files:
        if any(other.startswith(name + "/") for other in extra_files):
            raise ValueError(f"extra file name {name!r} is also used as a directory by another extra file")
    if not isinstance(description, dict):
        raise TypeError("description must be a dict")

    cp = log.checkpoint_now()  # covers everything appended so far, so every selected record
    for idx in wanted:
        if idx >= cp.size:
            raise ValueError(f"record {idx} is not in the log (checkpoint size {cp.size})")

    try:
        keys_pem = (log.directory / CHECKPOINT_KEYS).read_bytes()
        checkpoint_keys = load_public_keys(keys_pem)
    except (OSError, ValueError) as exc:
        raise BundleError(f"the log's {CHECKPOINT_KEYS} cannot be read ({exc}): its checkpoints cannot be proven") from None
    if not cp.verified_by(checkpoint_keys):
        raise BundleError(f"checkpoint of size {cp.size} is not signed by a key in the log's {CHECKPOINT_KEYS} "
                          "(does the log have a signing key?)")

    notes_text, history, used_number = _checkpoint_history(log, cp, wanted[0] if wanted else 0)
    consistency = _consistency(log, history)

    spools: list[_Spool] = []
    try:
        return _write(out_path, log, wanted, cp, signing_key, extra_files, description, keys_pem, notes_text,
                      history, used_number, consistency, spools)
    finally:
        for spool in spools:
            spool.close()


def _write(out_path: Path, log: EvidenceLog, wanted: list[int], cp: Checkpoint, signing_key: Ed25519PrivateKey,
           extra_files: dict[str, bytes], description: dict, keys_pem: bytes, notes_text: bytes,
           history: list[tuple[int, Checkpoint]], used_number: int, consistency: list[dict[str, Any]],
           spools: list[_Spool]) -> BundleSummary:
    def spool(data: bytes = b"") -> _Spool:
        spools.append(_Spool.of(data))
        return spools[-1]

    created = time.time()
    mtime = int(created)
    records = spool()
    bodies = spool()
    n_bodies = 0
    not_decrypted: list[int] = []
    for idx in wanted:
        try:
            leaf = log.read_leaf(idx)
        except KeyError as exc:  # retention removed the segment holding it
            raise BundleError(f"record {idx} cannot be exported: {exc.args[0] if exc.args else exc}") from None
        proof = log.inclusion_proof(idx, cp.size)
        if not verify_inclusion(leaf_hash(leaf), idx, cp.size, proof, cp.root):
            raise BundleError(f"record {idx}: the log's inclusion proof does not lead to the root of checkpoint "
                              f"#{used_number} (size {cp.size}); run `gateway evidence verify` on the log")
        record = json.loads(leaf)
        records.write_line({"index": idx, "leaf_b64": base64.b64encode(leaf).decode("ascii"), "record": record,
                            "tree_size": cp.size, "inclusion_proof": [p.hex() for p in proof]})
        if isinstance(record, dict) and isinstance(record.get("bodies"), dict) and record["bodies"]:
            opened = _open_bodies(log, idx)
            if opened is None or len(opened) < len(record["bodies"]):
                not_decrypted.append(idx)
            if opened:
                bodies.write_line({"index": idx, "bodies": opened})
                n_bodies += 1

    desc = dict(description)
    desc.update({
        "created": created,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "origin": log.origin,
        "checkpoint": {"number": used_number, "size": cp.size, "root": cp.root.hex(), "time": cp.time},
        "records": len(wanted),
        "records_with_decrypted_bodies": n_bodies,
        "records_with_bodies_not_decrypted": not_decrypted,
    })

    files: dict[str, _Spool] = {}
    files[README] = spool(_readme(log.origin, cp, used_number, len(wanted), n_bodies, sorted(extra_files)))
    files[MANIFEST_KEY] = spool(public_pem(signing_key.public_key()))
    files[CHECKPOINT_KEYS] = spool(keys_pem)
    files[CHECKPOINTS] = spool(notes_text)
    files[CONSISTENCY] = spool(_json_bytes({"checkpoints": len(history), "proofs": consistency}))
    files[RECORDS] = records
    files[BODIES] = bodies
    for name in sorted(extra_files):
        files[name] = spool(extra_files[name])

    manifest = _json_bytes({
        "format": FORMAT,
        "version": VERSION,
        "description": desc,
        "files": [{"name": name, "sha256": f.sha256.hexdigest(), "size": f.size} for name, f in sorted(files.items())],
    })
    signature = base64.b64encode(signing_key.sign(manifest)) + b"\n"
    order = [(README, files[README]), (MANIFEST, spool(manifest)), (MANIFEST_SIG, spool(signature))]
    order += [(name, f) for name, f in files.items() if name != README]
    digest, size = _write_atomically(out_path, order, mtime)
    return BundleSummary(out_path, digest, size, len(wanted), n_bodies, tuple(not_decrypted), cp,
                         tuple(name for name, _ in order))


def _index_arg(i: object) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"record index {i!r} is not an integer")
    if i < 0:
        raise ValueError(f"record index {i} is negative")
    return i


def _check_extra_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"extra file name {name!r} must be a non-empty string")
    bad = ("\\" in name or "\x00" in name or name.startswith("/") or name.endswith("/")
           or any(part in ("", ".", "..") for part in name.split("/")))
    if bad:
        raise ValueError(f"extra file name {name!r} must be a relative path without '..', '.', '//' or backslashes")
    if name in RESERVED:
        raise ValueError(f"extra file name {name!r} is a bundle file of its own")
    return name


def _check_bytes(name: str, data: object) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"extra file {name!r} must be bytes")
    return bytes(data)


def _checkpoint_history(log: EvidenceLog, cp: Checkpoint, first_record: int = 0) -> tuple[bytes, list[tuple[int, Checkpoint]], int]:
    """The checkpoints the bundle carries, as their exact stored notes; their numbers; cp's number.

    Consistency proofs chain, so a few notes prove what all of them would: the log's
    first checkpoint, the last one before the first exported record (the log as it
    stood before), and the one every record is proven against. A log signs a note
    every few seconds; carrying them all would make a bundle grow with the log's age.
    """
    raw = (log.directory / "checkpoints.log").read_bytes()
    entries, end, _ = parse_log(raw)
    signed = [k for k, e in enumerate(entries) if e.checkpoint is not None]
    at = next((k for k in reversed(signed) if entries[k].checkpoint == cp), None)
    if at is None:
        raise BundleError(f"checkpoint of size {cp.size} is not in the log's checkpoints.log")
    before = max((k for k in signed if k <= at and entries[k].checkpoint.size <= first_record), default=signed[0])
    keep = sorted({signed[0], before, at})

    def note(k: int) -> bytes:
        return raw[entries[k].offset:entries[k + 1].offset if k + 1 < len(entries) else end]

    sparse = b"".join(note(k) for k in keep)
    parsed, _, _ = parse_log(sparse)
    history = [(e.number, e.checkpoint) for e in parsed if e.checkpoint is not None]
    return sparse, history, parsed[-1].number


def _consistency(log: EvidenceLog, history: list[tuple[int, Checkpoint]]) -> list[dict[str, Any]]:
    out = []
    for (na, a), (nb, b) in itertools.pairwise(history):
        if a.size == 0 or a.size == b.size or a.size > b.size:
            proof: list[bytes] = []  # extends the empty tree / equal sizes: nothing to prove (or reported)
        else:
            proof = log.consistency_proof(a.size, b.size)
        out.append({"from": na, "to": nb, "from_size": a.size, "to_size": b.size, "proof": [p.hex() for p in proof]})
    return out


def _open_bodies(log: EvidenceLog, idx: int) -> dict[str, dict[str, str]] | None:
    """The bodies the log can decode, as text or base64; None if decryption failed outright."""
    try:
        got = log.get(idx).get("bodies")
    except ValueError:  # a ciphertext that does not decrypt under its key id: damage, or a wrong key
        return None
    out: dict[str, dict[str, str]] = {}
    for name, value in (got or {}).items():
        if not isinstance(value, bytes):
            continue  # still an envelope: no key for it
        try:
            out[name] = {"body": value.decode("utf-8"), "body_encoding": "utf-8"}
        except UnicodeDecodeError:
            out[name] = {"body": base64.b64encode(value).decode("ascii"), "body_encoding": "base64"}
    return out


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()


class _Spool:
    """A member's bytes (in memory, spilling to a temp file when large) with a running sha256."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=16 << 20)
        self.sha256 = hashlib.sha256()
        self.size = 0

    @classmethod
    def of(cls, data: bytes) -> _Spool:
        spool = cls()
        spool.write(data)
        return spool

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def write_line(self, obj: object) -> None:
        self.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n")

    def close(self) -> None:
        self.file.close()


class _HashingWriter:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _write_atomically(out_path: Path, members: list[tuple[str, _Spool]], mtime: int) -> tuple[str, int]:
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=mtime) as gz:  # type: ignore[arg-type]
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    for name, spool in members:
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = spool.size, mtime, 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        spool.file.seek(0)
                        tar.addfile(info, spool.file)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(out_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems cannot fsync a directory
        pass
    return out.sha256.hexdigest(), out.size


def _readme(origin: str, cp: Checkpoint, number: int, records: int, bodies: int, extras: list[str]) -> bytes:
    extra_lines = "".join(f"  {name}\n" for name in extras) or "  (none)\n"
    return f"""Oversight gateway evidence bundle
=================================

Log:        {origin}
Checkpoint: #{number}, tree size {cp.size}, root {cp.root.hex()}
Records:    {records} (decrypted bodies for {bodies})

How to verify (needs only the oversight-gateway package, no network, no log):

    gateway evidence verify-bundle THIS.tar.gz --key GATEWAY.pub

--key names the gateway's evidence public key, obtained independently of
this bundle (repeatable; every key that signed a checkpoint or the manifest
must be given). Without --key the signatures are checked against the keys
inside the bundle: that proves the bundle is intact and self-consistent,
not who made it. Exit code 0 = verified, 1 = a problem (named on one line),
2 = not a readable bundle. Do not trust files from an extracted copy
without running the check on the archive itself.

What is checked: manifest.sig over manifest.json; every file's sha256 and
size against the manifest (none missing, none added); every checkpoint's
Ed25519 signature (C2SP signed note); RFC 9162 consistency proofs between
consecutive checkpoints; each record's leaf bytes, its RFC 9162 inclusion
proof against the root of the last checkpoint, indexes strictly increasing.

Files
-----
manifest.json           sha256 and size of every file below, and a description
                        of the export (filters, time, log origin, checkpoint used)
manifest.sig            base64 Ed25519 signature over the exact bytes of manifest.json
manifest-key.pub        PEM public key that signed the manifest
checkpoint-keys.pem     PEM public keys that signed the log's checkpoints
checkpoints.txt         the log's signed checkpoint notes (C2SP signed-note /
                        tlog-checkpoint), oldest first, up to the one used;
                        each note is followed by a blank line
consistency.json        RFC 9162 consistency proofs (hex) between consecutive checkpoints
records.jsonl           one JSON object per exported record, in log order:
                        index, leaf_b64 (the exact leaf bytes: Merkle leaf hash is
                        SHA-256(0x00 || leaf)), record (the leaf parsed),
                        tree_size, inclusion_proof (hex hashes, RFC 9162 2.1.3)
decrypted-bodies.jsonl  plaintext of the request/response bodies the exporting
                        gateway could decrypt: index, bodies {{name: {{body,
                        body_encoding: utf-8|base64}}}}. The log stores these
                        encrypted, so only the manifest signature vouches for the
                        plaintext. SENSITIVE: handle this bundle accordingly.
README.txt              this file

Other files, added by the exporter (opaque; vouched for by the manifest):
{extra_lines}""".encode()


# ============================================================================ verifying


@dataclass(frozen=True)
class BundleProblem:
    where: str      # the file, record or checkpoint at fault, e.g. "records.jsonl", "record 17", "checkpoint #3 (size 40)"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class BundleReport:
    path: Path
    problems: list[BundleProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: int = 0                # record lines in records.jsonl
    bodies: int = 0                 # records with decrypted bodies
    checkpoint: Checkpoint | None = None  # the checkpoint the records are proven against
    checkpoints: int = 0
    description: dict = field(default_factory=dict)
    trust: str = ""                 # what the signatures were checked against

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> BundleProblem | None:
        return self.problems[0] if self.problems else None

    def summary(self) -> str:
        if not self.ok:
            more = len(self.problems) - 1
            return f"FAILED: {self.first_problem}" + (f" [+{more} more problem(s)]" if more else "")
        cp = self.checkpoint
        at = f"checkpoint size {cp.size} root {cp.root.hex()}" if cp else "no checkpoint"
        origin = f" of {cp.origin}" if cp else ""
        return (f"OK: {self.records} record(s) proven against {at}{origin}; {self.checkpoints} checkpoint(s), "
                f"{self.bodies} record(s) with decrypted bodies; signatures checked against {self.trust}")


def verify_bundle(path: Path, *, trusted_keys: list[Ed25519PublicKey] | None = None) -> BundleReport:
    """Check a bundle offline; raises BundleError only when the file is not a readable bundle at all."""
    if trusted_keys is not None:
        trusted_keys = list(trusted_keys)
        if not trusted_keys:
            raise ValueError("trusted_keys is empty (pass None to use the keys inside the bundle)")
    return _BundleVerifier(Path(path), trusted_keys).run()


class _Bad(Exception):
    """Internal: one check failed; the message is the reason."""


@dataclass
class _Member:
    size: int
    sha256: str
    data: bytes | None  # kept for the files that are parsed


class _BundleVerifier:
    def __init__(self, path: Path, trusted: list[Ed25519PublicKey] | None) -> None:
        self.path = path
        self.trusted = trusted
        self.report = BundleReport(path)
        self.members: dict[str, _Member] = {}
        self.bad_records: set[int] = set()  # already reported: their bodies are not checked again

    def problem(self, where: str, reason: str) -> None:
        self.report.problems.append(BundleProblem(where, reason))

    def data(self, name: str) -> bytes | None:
        member = self.members.get(name)
        return member.data if member else None

    def run(self) -> BundleReport:
        self._read_archive()
        if not any(n in self.members for n in (MANIFEST, MANIFEST_SIG, RECORDS)):
            raise BundleError(f"{self.path}: not an evidence bundle (no {MANIFEST}, {MANIFEST_SIG} or {RECORDS})")
        if self.trusted is not None:
            self.report.trust = "the given key(s)"
        else:
            self.report.trust = ("the keys inside the bundle only (its integrity is checked, not who made it: "
                                 "pass --key for an independent check)")
            self.report.notes.append("no trusted key given: trust rests on the bundle itself")
        self._check_manifest_signature()
        manifest = self._parse_manifest()
        if manifest is not None:
            self._check_files(manifest)
        cps = self._check_checkpoints()
        self._check_consistency(cps)
        cp = self._used_checkpoint(cps)
        leaves = self._check_records(cp)
        self._check_bodies(leaves)
        return self.report

    # ---------------------------------------------------------------- archive

    def _read_archive(self) -> None:
        """Decompress all of it first (so the gzip CRC and a truncated tail are checked), then read the tar."""
        try:
            with tempfile.SpooledTemporaryFile(max_size=64 << 20) as tar_bytes:
                with gzip.open(self.path, "rb") as gz:
                    shutil.copyfileobj(gz, tar_bytes, _CHUNK)
                tar_bytes.seek(0)
                with tarfile.open(fileobj=tar_bytes, mode="r:") as tar:
                    for info in tar:
                        self._member(tar, info)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{self.path}: not a readable .tar.gz bundle ({exc or type(exc).__name__})") from None

    def _member(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        raw = info.name
        where = f"archive member {raw!r}"
        if info.isdir() and raw.rstrip("/") in ("", "."):
            return None  # the top directory of a bundle repacked with `tar -C dir .`
        name = raw.removeprefix("./")
        if "\\" in name or "\x00" in name or name.startswith("/") or not name:
            return self.problem(where, "refused: absolute path, backslash or empty name")
        parts = name.rstrip("/").split("/") if info.isdir() else name.split("/")
        if ".." in parts:
            return self.problem(where, "refused: the path climbs out of the bundle ('..')")
        if any(p in ("", ".") for p in parts):
            return self.problem(where, "refused: empty or '.' path component")
        if info.isdir():
            return None  # a repacked bundle may hold directory entries: they carry no data
        if not info.isreg():
            kind = "a link" if info.issym() or info.islnk() else "a device, FIFO or other special file"
            return self.problem(where, f"refused: {kind}, not a regular file")
        if name in self.members:
            return self.problem(where, "refused: a second member with the same name")
        stream = tar.extractfile(info)
        assert stream is not None
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        size = 0
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if name in _PARSED:
                chunks.append(chunk)
        self.members[name] = _Member(size, digest.hexdigest(), b"".join(chunks) if name in _PARSED else None)
        return None

    # ---------------------------------------------------------------- manifest

    def _check_manifest_signature(self) -> None:
        where = "manifest signature"
        manifest, sig_text = self.data(MANIFEST), self.data(MANIFEST_SIG)
        if manifest is None or sig_text is None:
            missing = MANIFEST if manifest is None else MANIFEST_SIG
            return self.problem(where, f"{missing} is missing: nothing vouches for the bundle's files")
        try:
            signature = base64.b64decode(sig_text.strip(), validate=True)
        except (binascii.Error, ValueError):
            return self.problem(where, f"{MANIFEST_SIG} is not base64")
        if len(signature) != 64:
            return self.problem(where, f"{MANIFEST_SIG} does not hold a 64-byte Ed25519 signature")
        own = self._bundle_manifest_key()
        keys = self.trusted if self.trusted is not None else own
        if keys is None:
            return None  # the problem with manifest-key.pub is already reported
        if _signed_by(keys, signature, manifest):
            return None
        if self.trusted is not None and own and _signed_by(own, signature, manifest):
            return self.problem(where, f"{MANIFEST} is signed by the key in {MANIFEST_KEY}, which is not one of "
                                       "the given trusted keys (a re-signed or foreign bundle)")
        who = "any of the given trusted keys" if self.trusted is not None else f"the key in {MANIFEST_KEY}"
        return self.problem(where, f"{MANIFEST_SIG} is not a valid signature over {MANIFEST} by {who} "
                                   f"({MANIFEST} or {MANIFEST_SIG} was altered)")

    def _bundle_manifest_key(self) -> list[Ed25519PublicKey] | None:
        pem = self.data(MANIFEST_KEY)
        if pem is None:
            if self.trusted is None:
                self.problem("manifest signature", f"{MANIFEST_KEY} is missing: no key to check the signature with")
            return None
        try:
            return load_public_keys(pem)
        except (ValueError, TypeError) as exc:
            if self.trusted is None:
                self.problem("manifest signature", f"{MANIFEST_KEY} is not an Ed25519 public key PEM ({exc})")
            return None

    def _parse_manifest(self) -> dict | None:
        data = self.data(MANIFEST)
        if data is None:
            return None
        try:
            manifest = _loads(data)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise _Bad(f"not an evidence bundle manifest (format {manifest.get('format')!r})"
                           if isinstance(manifest, dict) else "not a JSON object")
            if manifest.get("version") != VERSION:
                raise _Bad(f"unsupported bundle version {manifest.get('version')!r}")
            files = manifest.get("files")
            if not isinstance(files, list):
                raise _Bad('"files" is not a list')
            listed: dict[str, tuple[int, str]] = {}
            for entry in files:
                if not isinstance(entry, dict):
                    raise _Bad("a file entry is not an object")
                name, size, sha = entry.get("name"), entry.get("size"), entry.get("sha256")
                if not isinstance(name, str) or type(size) is not int or size < 0 or not _is_sha256(sha):
                    raise _Bad(f"malformed file entry {entry!r:.120}")
                if name in listed or name in (MANIFEST, MANIFEST_SIG):
                    raise _Bad(f"lists {name!r} twice, or a file it cannot list")
                listed[name] = (size, sha)
            description = manifest.get("description")
            if not isinstance(description, dict):
                raise _Bad('"description" is not an object')
        except _Bad as exc:
            self.problem(MANIFEST, str(exc))
            return None
        self.report.description = description
        return listed

    def _check_files(self, listed: dict[str, tuple[int, str]]) -> None:
        for name, (size, sha) in listed.items():
            member = self.members.get(name)
            if member is None:
                self.problem(name, "listed in the manifest but missing from the bundle (removed)")
            elif member.size != size:
                self.problem(name, f"is {member.size} bytes, the manifest says {size} (the file was altered)")
            elif member.sha256 != sha:
                self.problem(name, "sha256 differs from the manifest (the file was altered)")
        for name in self.members:
            if name not in listed and name not in (MANIFEST, MANIFEST_SIG):
                self.problem(name, "is in the bundle but not in the manifest (a file was added)")
        for name in REQUIRED:
            if name not in listed and name not in self.members:
                self.problem(name, "required bundle file is missing from both the bundle and the manifest")

    # ---------------------------------------------------------------- checkpoints

    def _checkpoint_keys(self) -> list[Ed25519PublicKey]:
        if self.trusted is not None:
            return self.trusted
        pem = self.data(CHECKPOINT_KEYS)
        if pem is None:
            self.problem(CHECKPOINT_KEYS, "missing: no key to check the checkpoint signatures with")
            return []
        try:
            return load_public_keys(pem)
        except (ValueError, TypeError) as exc:
            self.problem(CHECKPOINT_KEYS, f"not Ed25519 public key PEM ({exc})")
            return []

    def _check_checkpoints(self) -> list[tuple[int, Checkpoint]]:
        data = self.data(CHECKPOINTS)
        if data is None:
            return []
        entries, end, torn = parse_log(data)
        if not torn or end != len(data):
            self.problem(CHECKPOINTS, f"damaged at byte {end}: not a sequence of signed notes")
        cps: list[tuple[int, Checkpoint]] = []
        for e in entries:
            if e.checkpoint is None:
                self.problem(f"checkpoint #{e.number}", f"does not parse ({e.error})")
            else:
                cps.append((e.number, e.checkpoint))
        self.report.checkpoints = len(cps)
        if not cps:
            self.problem(CHECKPOINTS, "holds no checkpoint")
            return cps
        keys = self._checkpoint_keys()
        who = "any of the given trusted keys" if self.trusted is not None else f"a key in {CHECKPOINT_KEYS}"
        origin = self.report.description.get("origin")
        origin = origin if isinstance(origin, str) else cps[-1][1].origin
        unsigned = [(number, cp) for number, cp in cps if keys and not cp.verified_by(keys)]
        if unsigned:
            number, cp = unsigned[0]
            more = f" ({len(unsigned)} of the {len(cps)} checkpoints are not)" if len(unsigned) > 1 else ""
            self.problem(f"checkpoint #{number} (size {cp.size})", f"is not validly signed by {who}{more}")
        for number, cp in cps:
            if cp.origin != origin:
                self.problem(f"checkpoint #{number} (size {cp.size})",
                             f"origin {cp.origin!r} is not the bundle's log {origin!r}")
        return cps

    def _check_consistency(self, cps: list[tuple[int, Checkpoint]]) -> None:
        data = self.data(CONSISTENCY)
        if data is None or not cps:
            return
        try:
            doc = _loads(data)
            proofs = doc.get("proofs") if isinstance(doc, dict) else None
            if not isinstance(proofs, list):
                raise _Bad('no "proofs" list')
            if len(proofs) != len(cps) - 1:
                raise _Bad(f"{len(proofs)} proof(s) for {len(cps)} checkpoints (expected {len(cps) - 1})")
        except _Bad as exc:
            return self.problem(CONSISTENCY, str(exc))
        for ((na, a), (nb, b)), entry in zip(itertools.pairwise(cps), proofs):
            where = f"checkpoint #{nb} (size {b.size})"
            try:
                if not isinstance(entry, dict) or (entry.get("from"), entry.get("to")) != (na, nb) \
                        or (entry.get("from_size"), entry.get("to_size")) != (a.size, b.size):
                    raise _Bad(f"{CONSISTENCY} has no proof entry for checkpoints #{na} -> #{nb}")
                proof = _hashes(entry.get("proof"))
            except _Bad as exc:
                self.problem(where, str(exc))
                continue
            if a.size > b.size:
                self.problem(where, f"tree size went backwards from checkpoint #{na} (size {a.size})")
            elif not verify_consistency(a.size, b.size, a.root, b.root, proof):
                why = "a different root at the same size (a fork)" if a.size == b.size else "the log was rewritten"
                self.problem(where, f"is not consistent with checkpoint #{na} (size {a.size}): {why}")

    def _used_checkpoint(self, cps: list[tuple[int, Checkpoint]]) -> Checkpoint | None:
        if not cps:
            return None
        number, cp = cps[-1]
        self.report.checkpoint = cp
        named = self.report.description.get("checkpoint")
        if isinstance(named, dict) and (named.get("size"), named.get("root"), named.get("number")) != \
                (cp.size, cp.root.hex(), number):
            self.problem(MANIFEST, f"describes checkpoint #{named.get('number')} size {named.get('size')} root "
                                   f"{named.get('root')}, but {CHECKPOINTS} ends with #{number} size {cp.size} "
                                   f"root {cp.root.hex()}")
        return cp

    # ---------------------------------------------------------------- records

    def _check_records(self, cp: Checkpoint | None) -> dict[int, dict]:
        """Check every record line; returns the parsed leaves of the good ones by index."""
        data = self.data(RECORDS)
        leaves: dict[int, dict] = {}
        if data is None:
            return leaves
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        else:
            self.problem(RECORDS, "does not end with a newline (truncated?)")
        self.report.records = len(lines)
        last = -1
        for lineno, line in enumerate(lines, 1):
            where = f"{RECORDS} line {lineno}"
            try:
                entry = _loads(line)
                if not isinstance(entry, dict):
                    raise _Bad("not a JSON object")
                idx = entry.get("index")
                if type(idx) is not int:
                    raise _Bad(f'"index" {idx!r:.40} is not an integer')
                where = f"record {idx}"
                if idx <= last:
                    raise _Bad(f"index is not strictly greater than the previous record's ({last})")
                last = idx
                try:
                    leaves[idx] = self._check_record(entry, idx, cp)
                except _Bad:
                    self.bad_records.add(idx)
                    raise
            except _Bad as exc:
                self.problem(where, str(exc))
        if lines and isinstance(self.report.description.get("records"), int) \
                and self.report.description["records"] != len(lines):
            self.problem(MANIFEST, f"says {self.report.description['records']} records, {RECORDS} has {len(lines)}")
        return leaves

    @staticmethod
    def _check_record(entry: dict, idx: int, cp: Checkpoint | None) -> dict:
        text = entry.get("leaf_b64")
        try:
            if not isinstance(text, str):
                raise ValueError
            leaf = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise _Bad('"leaf_b64" is not base64') from None
        parsed = _loads(leaf, what="leaf")
        if not isinstance(parsed, dict):
            raise _Bad("the leaf is not a JSON object")
        if "record" not in entry or _canonical(entry["record"]) != _canonical(parsed):
            raise _Bad('"record" is not the JSON of the leaf bytes (the record was edited)')
        size = entry.get("tree_size")
        if cp is None:
            raise _Bad("no checkpoint to prove it against")
        if size != cp.size or type(size) is not int:
            raise _Bad(f'"tree_size" {size!r:.40} is not the size of the checkpoint used ({cp.size})')
        if idx >= size:
            raise _Bad(f"index is outside the tree of size {size}")
        proof = _hashes(entry.get("inclusion_proof"), what='"inclusion_proof"')
        if not verify_inclusion(leaf_hash(leaf), idx, size, proof, cp.root):
            raise _Bad(f"the inclusion proof does not lead from the leaf to the root of the checkpoint "
                       f"(size {cp.size}, root {cp.root.hex()}): the leaf or its proof was altered")
        return parsed

    def _check_bodies(self, leaves: dict[int, dict]) -> None:
        data = self.data(BODIES)
        if data is None:
            return
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif data:
            self.problem(BODIES, "does not end with a newline (truncated?)")
        attested = 0
        last = -1
        for lineno, line in enumerate(lines, 1):
            where = f"{BODIES} line {lineno}"
            try:
                entry = _loads(line)
                idx = entry.get("index") if isinstance(entry, dict) else None
                if type(idx) is not int:
                    raise _Bad('not an object with an integer "index"')
                where = f"decrypted bodies of record {idx}"
                if idx <= last:
                    raise _Bad(f"index is not strictly greater than the previous line's ({last})")
                last = idx
                if idx in self.bad_records:
                    continue  # the record itself is already reported
                if idx not in leaves:
                    raise _Bad(f"no such record in {RECORDS}")
                bodies = entry.get("bodies")
                sealed = leaves[idx].get("bodies")
                if not isinstance(bodies, dict) or not bodies or not isinstance(sealed, dict):
                    raise _Bad('"bodies" is empty, not an object, or the record has no bodies')
                for name, body in bodies.items():
                    value = _body_bytes(name, body)
                    env = sealed.get(name)
                    if not isinstance(env, dict):
                        raise _Bad(f"body {name!r} is not in the record")
                    if "b64" in env:  # stored in the clear: the leaf itself vouches for it
                        if env.get("b64") != base64.b64encode(value).decode("ascii"):
                            raise _Bad(f"body {name!r} differs from the one stored in the leaf")
                    else:
                        attested += 1
            except _Bad as exc:
                self.problem(where, str(exc))
                continue
            self.report.bodies += 1
        if attested:
            self.report.notes.append(f"{attested} decrypted body(ies) are vouched for by the manifest signature "
                                     "only (the log stores them encrypted; the Merkle proofs cover the ciphertext)")


def _signed_by(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def _loads(data: bytes, what: str = "line") -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Bad(f"{what} is not valid UTF-8 JSON ({type(exc).__name__})") from None


def _canonical(obj: object) -> bytes | None:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError):
        return None


def _hashes(value: object, what: str = "proof") -> list[bytes]:
    if not isinstance(value, list):
        raise _Bad(f"{what} is not a list")
    out = []
    for h in value:
        if not _is_sha256(h):
            raise _Bad(f"{what} holds {h!r:.70}, not a 64-digit hex hash")
        out.append(bytes.fromhex(h))
    return out


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _body_bytes(name: object, body: object) -> bytes:
    if not isinstance(body, dict) or not isinstance(body.get("body"), str):
        raise _Bad(f"body {name!r} is not an object with a text \"body\"")
    encoding = body.get("body_encoding")
    if encoding == "utf-8":
        try:
            return body["body"].encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise _Bad(f"body {name!r} is not valid UTF-8") from None
    if encoding == "base64":
        try:
            return base64.b64decode(body["body"].encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise _Bad(f"body {name!r} is not base64") from None
    raise _Bad(f"body {name!r} has body_encoding {encoding!r}, not utf-8 or base64")
