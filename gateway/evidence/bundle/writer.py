"""Writing a bundle: the selected records with their proofs, and everything needed to check them offline.

`write_bundle` forces a signed checkpoint that covers every selected record, proves each
record against it, carries the few checkpoint notes whose consistency proofs chain back
to the log's first one, signs a manifest of every member, and writes the `.tar.gz`
atomically (see `format` for the members, `archive` for the container).
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..bodies import pack_body
from ..checkpoints import Checkpoint, parse_log
from ..cosignature import Witnessed
from ..crypto import load_public_keys, public_pem
from ..errors import BundleError
from ..merkle import leaf_hash, verify_inclusion
from .archive import Spool, write_archive
from .format import (BODIES, CHECKPOINT_KEYS, CHECKPOINTS, CONSISTENCY, FORMAT, MANIFEST, MANIFEST_KEY,
                     MANIFEST_SIG, README, RECORDS, RESERVED, VERSION, WITNESS_KEYS, WITNESSES, readme)

if TYPE_CHECKING:
    from ..log import EvidenceLog
    from ..reader import LogReader


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
    witnesses: int = 0          # distinct witnesses whose cosignatures the bundle carries


def write_bundle(out_path: Path, log: EvidenceLog | LogReader, indexes: Iterable[int], *,
                 signing_key: Ed25519PrivateKey, extras: dict[str, bytes], description: dict,
                 checkpoint: Checkpoint | None = None, cosigned: Sequence[Witnessed] = (),
                 witness_keys: bytes = b"") -> BundleSummary:
    """Write a bundle of the records at `indexes` to `out_path` (atomically: temp file beside it, then rename).

    Blocking (forces an fsynced checkpoint, reads the log): call it from a worker
    thread. The file is created mode 0600: it holds decrypted bodies. `checkpoint`
    proves the records against that signed checkpoint instead of a fresh one (a
    `LogReader` cannot sign). `cosigned` are witnesses' cosignatures over checkpoints
    of this log, with `witness_keys` (PEM) to check them; each is proven consistent with
    the checkpoint used. Raises BundleError when the log cannot back the bundle
    (unsigned checkpoint, a record removed by retention, a proof that does not check),
    ValueError or TypeError on bad arguments.
    """
    out_path = Path(out_path)
    wanted = sorted({_index_arg(i) for i in indexes})
    extra_files = {_check_extra_name(name): _check_bytes(name, data) for name, data in extras.items()}
    for name in extra_files:
        if any(other.startswith(name + "/") for other in extra_files):
            raise ValueError(f"extra file name {name!r} is also used as a directory by another extra file")
    if not isinstance(description, dict):
        raise TypeError("description must be a dict")

    cp = checkpoint if checkpoint is not None else log.checkpoint_now()  # covers every selected record
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
    witnessed, witnesses = _witnessed(log, cp, cosigned)
    if witnessed:
        extra_files[WITNESSES] = _json_bytes({"to_size": cp.size, "cosigned": witnessed})
        extra_files[WITNESS_KEYS] = witness_keys

    spools: list[Spool] = []
    try:
        return _write(out_path, log, wanted, cp, signing_key, extra_files, description, keys_pem, notes_text,
                      history, used_number, consistency, spools, witnesses)
    finally:
        for spool in spools:
            spool.close()


def _write(out_path: Path, log: EvidenceLog | LogReader, wanted: list[int], cp: Checkpoint,
           signing_key: Ed25519PrivateKey, extra_files: dict[str, bytes], description: dict, keys_pem: bytes,
           notes_text: bytes, history: list[tuple[int, Checkpoint]], used_number: int,
           consistency: list[dict[str, Any]], spools: list[Spool], witnesses: int) -> BundleSummary:
    def spool(data: bytes = b"") -> Spool:
        spools.append(Spool.of(data))
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
        "witnesses": witnesses,
    })

    files: dict[str, Spool] = {}
    extras = sorted(name for name in extra_files if name not in (WITNESSES, WITNESS_KEYS))
    files[README] = spool(readme(log.origin, cp, used_number, len(wanted), n_bodies, extras, witnesses))
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
    digest, size = write_archive(out_path, order, mtime)
    return BundleSummary(out_path, digest, size, len(wanted), n_bodies, tuple(not_decrypted), cp,
                         tuple(name for name, _ in order), witnesses)


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


def _checkpoint_history(log: EvidenceLog | LogReader, cp: Checkpoint, first_record: int = 0) -> tuple[bytes, list[tuple[int, Checkpoint]], int]:
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


def _consistency(log: EvidenceLog | LogReader, history: list[tuple[int, Checkpoint]]) -> list[dict[str, Any]]:
    out = []
    for (na, a), (nb, b) in itertools.pairwise(history):
        if a.size == 0 or a.size == b.size or a.size > b.size:
            proof: list[bytes] = []  # extends the empty tree / equal sizes: nothing to prove (or reported)
        else:
            proof = log.consistency_proof(a.size, b.size)
        out.append({"from": na, "to": nb, "from_size": a.size, "to_size": b.size, "proof": [p.hex() for p in proof]})
    return out


def _witnessed(log: EvidenceLog | LogReader, cp: Checkpoint,
               cosigned: Sequence[Witnessed]) -> tuple[list[dict[str, Any]], int]:
    """Each cosigned checkpoint of this log no larger than `cp`, with its consistency proof to `cp`; how many witnesses.

    The proof comes from the log as it stands: if the log was rewritten since a witness
    saw it, the proof does not check and the verifier says so.
    """
    out, names = [], set()
    for w in cosigned:
        if w.checkpoint.origin != log.origin or w.checkpoint.size > cp.size or not w.cosignatures:
            continue
        m = w.checkpoint.size
        proof = log.consistency_proof(m, cp.size) if 0 < m < cp.size else []
        out.append({"note": w.note(), "proof": [p.hex() for p in proof]})
        names.update((c.name, c.key_hash) for c in w.cosignatures)
    return out, len(names)


def _open_bodies(log: EvidenceLog | LogReader, idx: int) -> dict[str, dict[str, str]] | None:
    """The bodies the log can decode, packed as text or base64; None if decryption failed outright."""
    try:
        got = log.get(idx).get("bodies")
    except ValueError:  # a ciphertext that does not decrypt under its key id: damage, or a wrong key
        return None
    # a body that is not bytes is still an envelope: no key for it
    return {name: pack_body(value) for name, value in (got or {}).items() if isinstance(value, bytes)}


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
