"""Checking the witnesses' cosignatures a bundle carries (`witnesses.json`, `witness-keys.pem`).

A cosignature counts for a record when its witness's key signs it, the witness is not
the log itself, the cosigned checkpoint is the log's (signed by the log's key), it covers
the record, and the log's consistency proof leads from it to the checkpoint the records
are proven against. A proof that does not check is a problem whether or not cosignatures
are required: the log was rewritten after a witness saw it.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..checkpoints import Checkpoint
from ..cosignature import parse_witnessed
from ..crypto import load_public_keys, raw_public
from ..errors import CheckpointError
from ..merkle import verify_consistency
from .format import WITNESS_KEYS, WITNESSES
from .parsing import Malformed, hashes, loads


def check_witnesses(data: bytes | None, keys_pem: bytes | None, *, trusted: list[Ed25519PublicKey] | None,
                    log_keys: list[Ed25519PublicKey], cp: Checkpoint | None, needed_size: int, required: int,
                    problem: Callable[[str, str], None]) -> int:
    """How many witnesses vouch for the first `needed_size` records; reports what does not check."""
    none = 0
    if data is None:
        if required:
            problem(WITNESSES, f"missing: {required} witness cosignature(s) are required and the bundle has none")
        return none
    if cp is None:
        return none
    keys = trusted if trusted is not None else _bundle_keys(keys_pem, problem)
    own = {raw_public(k) for k in log_keys}
    try:
        doc = loads(data)
        entries = doc.get("cosigned") if isinstance(doc, dict) else None
        if not isinstance(entries, list) or doc.get("to_size") != cp.size:
            raise Malformed(f'expected {{"to_size": {cp.size}, "cosigned": [...]}}')
    except Malformed as exc:
        problem(WITNESSES, str(exc))
        return none
    vouching: dict[bytes, int] = {}  # witness key -> largest consistent size it cosigned
    for n, entry in enumerate(entries, 1):
        where = f"{WITNESSES} entry {n}"
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("note"), str):
                raise Malformed('not an object with a "note"')
            witnessed = parse_witnessed(entry["note"])
            proof = hashes(entry.get("proof"))
        except (Malformed, CheckpointError) as exc:
            problem(where, str(exc))
            continue
        seen = witnessed.checkpoint
        where = f"{where} (cosigned size {seen.size})"
        if seen.origin != cp.origin:
            problem(where, f"cosigns a checkpoint of {seen.origin!r}, not of this log {cp.origin!r}")
            continue
        if log_keys and not seen.verified_by(log_keys):
            problem(where, "the cosigned checkpoint is not signed by the log's key")
            continue
        if not _consistent(seen, cp, proof):
            names = ", ".join(sorted({c.name for c in witnessed.cosignatures}))
            problem(where, f"is not consistent with the checkpoint used (size {cp.size}): the log was rewritten "
                           f"after {names} cosigned it")
            continue
        for cosig in witnessed.cosignatures:
            key = next((k for k in keys if cosig.verifies(seen, k)), None)
            if key is None:
                problem(where, f"the cosignature of {cosig.name} does not verify with "
                               f"{'a given witness key' if trusted is not None else 'a key in ' + WITNESS_KEYS}")
            elif raw_public(key) not in own:
                vouching[raw_public(key)] = max(vouching.get(raw_public(key), 0), seen.size)
    covering = [size for size in vouching.values() if size >= needed_size]
    if len(covering) < required:
        sizes = sorted(vouching.values(), reverse=True)
        problem(WITNESSES, f"{len(covering)} witness(es) cosigned a checkpoint covering every record (tree size "
                           f">= {needed_size}), {required} required (cosigned sizes: {sizes or 'none'})")
    return len(covering)


def _consistent(seen: Checkpoint, cp: Checkpoint, proof: list[bytes]) -> bool:
    if seen.size > cp.size:
        return False
    if seen.size == cp.size:
        return seen.root == cp.root
    return seen.size == 0 or verify_consistency(seen.size, cp.size, seen.root, cp.root, proof)


def _bundle_keys(pem: bytes | None, problem: Callable[[str, str], None]) -> list[Ed25519PublicKey]:
    if not pem:
        problem(WITNESS_KEYS, "missing or empty: no key to check the cosignatures with")
        return []
    try:
        return load_public_keys(pem)
    except (ValueError, TypeError) as exc:
        problem(WITNESS_KEYS, f"not Ed25519 public key PEM ({exc})")
        return []
