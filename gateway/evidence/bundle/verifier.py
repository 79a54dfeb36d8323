"""Verifying a bundle offline, with nothing but this library and, ideally, the gateway's public key.

It never extracts the archive (see `archive`). It checks the manifest signature, every
file against the manifest, every checkpoint signature, consistency between consecutive
checkpoints, and that every record hashes, with its proof, to the root of the signed
checkpoint the bundle names. Without `trusted_keys` the signatures are checked against
keys carried inside the bundle, which proves integrity but not who made it: whoever can
rewrite the bundle can replace those keys too. Pass the gateway's public key for an
independent check.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..bodies import unpack_untrusted_body
from ..checkpoints import Checkpoint, parse_log
from ..crypto import load_public_keys, signed_by
from ..errors import BundleError
from ..merkle import leaf_hash, verify_consistency, verify_inclusion
from ..report import Problem, Report
from .archive import Member, read_members
from .format import (BODIES, CHECKPOINT_KEYS, CHECKPOINTS, CONSISTENCY, FORMAT, MANIFEST, MANIFEST_KEY,
                     MANIFEST_SIG, RECORDS, REQUIRED, VERSION, WITNESS_KEYS, WITNESSES)
from .parsing import Malformed, comparable_json, hashes, is_sha256, jsonl_lines, loads
from .witnesses import check_witnesses

# Members read into memory to be parsed; every other member is only hashed, in chunks.
PARSED = frozenset((MANIFEST, MANIFEST_SIG, MANIFEST_KEY, CHECKPOINT_KEYS, CHECKPOINTS, CONSISTENCY, RECORDS, BODIES,
                    WITNESSES, WITNESS_KEYS))


@dataclass(frozen=True)
class BundleProblem(Problem):
    where: str      # the file, record or checkpoint at fault, e.g. "records.jsonl", "record 17", "checkpoint #3 (size 40)"
    reason: str


@dataclass
class BundleReport(Report[BundleProblem]):
    path: Path
    notes: list[str] = field(default_factory=list)
    records: int = 0                # record lines in records.jsonl
    bodies: int = 0                 # records with decrypted bodies
    checkpoint: Checkpoint | None = None  # the checkpoint the records are proven against
    checkpoints: int = 0
    description: dict = field(default_factory=dict)
    trust: str = ""                 # what the signatures were checked against
    witnesses: int = 0              # witnesses whose cosignatures cover every record
    manifest_key: bytes | None = None  # the PEM of manifest-key.pub, as the bundle carries it
    parts: list["BundleReport"] = field(default_factory=list)  # a fleet bundle: one report per log

    def verified(self) -> str:
        if self.parts:
            logs = "; ".join(f"{p.checkpoint.origin if p.checkpoint else p.path}: {p.records} at size "
                             f"{p.checkpoint.size if p.checkpoint else '?'}, {p.witnesses} witness(es)" for p in self.parts)
            return (f"{self.records} record(s) of {len(self.parts)} log(s), each proven against its own log's signed "
                    f"checkpoint ({logs}); signatures checked against {self.trust}")
        cp = self.checkpoint
        at = f"checkpoint size {cp.size} root {cp.root.hex()}" if cp else "no checkpoint"
        origin = f" of {cp.origin}" if cp else ""
        return (f"{self.records} record(s) proven against {at}{origin}, cosigned by {self.witnesses} witness(es); "
                f"{self.checkpoints} checkpoint(s), {self.bodies} record(s) with decrypted bodies; signatures "
                f"checked against {self.trust}")


@dataclass(frozen=True)
class Witnessing:
    """What a verifier demands of witnesses: how many must vouch for every record, and their keys if known."""

    required: int = 0
    keys: list[Ed25519PublicKey] | None = None  # None: the keys in the bundle's witness-keys.pem


def verify_log_bundle(path: Path, trusted_keys: list[Ed25519PublicKey] | None, witnessing: Witnessing) -> BundleReport:
    """Check a bundle of one log (`fleet.verify_bundle` is the public face for both kinds)."""
    return _BundleVerifier(path, trusted_keys, witnessing).run()


class _BundleVerifier:
    format, version, required = FORMAT, VERSION, REQUIRED  # what the manifest must say, which files must be there
    parsed: Collection[str] = PARSED

    def __init__(self, path: Path, trusted: list[Ed25519PublicKey] | None, witnessing: Witnessing = Witnessing()) -> None:
        self.path = path
        self.trusted = trusted
        self.witnessing = witnessing
        self.report = BundleReport(path)
        self.members: dict[str, Member] = {}
        self.bad_records: set[int] = set()  # already reported: their bodies are not checked again

    def problem(self, where: str, reason: str) -> None:
        self.report.problems.append(BundleProblem(where, reason))

    def data(self, name: str) -> bytes | None:
        member = self.members.get(name)
        return member.data if member else None

    def run(self) -> BundleReport:
        self.members = read_members(self.path, self.parsed, self.problem)
        if not any(n in self.members for n in (MANIFEST, MANIFEST_SIG, RECORDS)):
            raise BundleError(f"{self.path}: not an evidence bundle (no {MANIFEST}, {MANIFEST_SIG} or {RECORDS})")
        if self.trusted is not None:
            self.report.trust = "the given key(s)"
        else:
            self.report.trust = ("the keys inside the bundle only (its integrity is checked, not who made it: "
                                 "pass --key for an independent check)")
            self.report.notes.append("no trusted key given: trust rests on the bundle itself")
        self.report.manifest_key = self.data(MANIFEST_KEY)
        self._check_manifest_signature()
        manifest = self._parse_manifest()
        if manifest is not None:
            self._check_files(manifest)
        cps = self._check_checkpoints()
        self._check_consistency(cps)
        cp = self._used_checkpoint(cps)
        leaves = self._check_records(cp)
        self._check_bodies(leaves)
        self.report.witnesses = check_witnesses(
            self.data(WITNESSES), self.data(WITNESS_KEYS), trusted=self.witnessing.keys,
            log_keys=self._checkpoint_keys_quietly(), cp=cp, needed_size=max(leaves, default=-1) + 1,
            required=self.witnessing.required, problem=self.problem)
        return self.report

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
        if signed_by(keys, signature, manifest):
            return None
        if self.trusted is not None and own and signed_by(own, signature, manifest):
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
            manifest = loads(data)
            if not isinstance(manifest, dict) or manifest.get("format") != self.format:
                raise Malformed(f"not an evidence bundle manifest (format {manifest.get('format')!r})"
                                if isinstance(manifest, dict) else "not a JSON object")
            if manifest.get("version") != self.version:
                raise Malformed(f"unsupported bundle version {manifest.get('version')!r}")
            files = manifest.get("files")
            if not isinstance(files, list):
                raise Malformed('"files" is not a list')
            listed: dict[str, tuple[int, str]] = {}
            for entry in files:
                if not isinstance(entry, dict):
                    raise Malformed("a file entry is not an object")
                name, size, sha = entry.get("name"), entry.get("size"), entry.get("sha256")
                if not isinstance(name, str) or type(size) is not int or size < 0 or not is_sha256(sha):
                    raise Malformed(f"malformed file entry {entry!r:.120}")
                if name in listed or name in (MANIFEST, MANIFEST_SIG):
                    raise Malformed(f"lists {name!r} twice, or a file it cannot list")
                listed[name] = (size, sha)
            description = manifest.get("description")
            if not isinstance(description, dict):
                raise Malformed('"description" is not an object')
        except Malformed as exc:
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
        for name in self.required:
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

    def _checkpoint_keys_quietly(self) -> list[Ed25519PublicKey]:
        """The log's keys again, without reporting twice what `_checkpoint_keys` already reported."""
        if self.trusted is not None:
            return self.trusted
        try:
            return load_public_keys(self.data(CHECKPOINT_KEYS) or b"")
        except (ValueError, TypeError):
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
            doc = loads(data)
            proofs = doc.get("proofs") if isinstance(doc, dict) else None
            if not isinstance(proofs, list):
                raise Malformed('no "proofs" list')
            if len(proofs) != len(cps) - 1:
                raise Malformed(f"{len(proofs)} proof(s) for {len(cps)} checkpoints (expected {len(cps) - 1})")
        except Malformed as exc:
            return self.problem(CONSISTENCY, str(exc))
        for ((na, a), (nb, b)), entry in zip(itertools.pairwise(cps), proofs):
            where = f"checkpoint #{nb} (size {b.size})"
            try:
                if not isinstance(entry, dict) or (entry.get("from"), entry.get("to")) != (na, nb) \
                        or (entry.get("from_size"), entry.get("to_size")) != (a.size, b.size):
                    raise Malformed(f"{CONSISTENCY} has no proof entry for checkpoints #{na} -> #{nb}")
                proof = hashes(entry.get("proof"))
            except Malformed as exc:
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
        lines, complete = jsonl_lines(data)
        if not complete:
            self.problem(RECORDS, "does not end with a newline (truncated?)")
        self.report.records = len(lines)
        last = -1
        for lineno, line in enumerate(lines, 1):
            where = f"{RECORDS} line {lineno}"
            try:
                entry = loads(line)
                if not isinstance(entry, dict):
                    raise Malformed("not a JSON object")
                idx = entry.get("index")
                if type(idx) is not int:
                    raise Malformed(f'"index" {idx!r:.40} is not an integer')
                where = f"record {idx}"
                if idx <= last:
                    raise Malformed(f"index is not strictly greater than the previous record's ({last})")
                last = idx
                try:
                    leaves[idx] = self._check_record(entry, idx, cp)
                except Malformed:
                    self.bad_records.add(idx)
                    raise
            except Malformed as exc:
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
            raise Malformed('"leaf_b64" is not base64') from None
        parsed = loads(leaf, what="leaf")
        if not isinstance(parsed, dict):
            raise Malformed("the leaf is not a JSON object")
        if "record" not in entry or comparable_json(entry["record"]) != comparable_json(parsed):
            raise Malformed('"record" is not the JSON of the leaf bytes (the record was edited)')
        size = entry.get("tree_size")
        if cp is None:
            raise Malformed("no checkpoint to prove it against")
        if size != cp.size or type(size) is not int:
            raise Malformed(f'"tree_size" {size!r:.40} is not the size of the checkpoint used ({cp.size})')
        if idx >= size:
            raise Malformed(f"index is outside the tree of size {size}")
        proof = hashes(entry.get("inclusion_proof"), what='"inclusion_proof"')
        if not verify_inclusion(leaf_hash(leaf), idx, size, proof, cp.root):
            raise Malformed(f"the inclusion proof does not lead from the leaf to the root of the checkpoint "
                            f"(size {cp.size}, root {cp.root.hex()}): the leaf or its proof was altered")
        return parsed

    def _check_bodies(self, leaves: dict[int, dict]) -> None:
        data = self.data(BODIES)
        if data is None:
            return
        lines, complete = jsonl_lines(data)
        if not complete:
            self.problem(BODIES, "does not end with a newline (truncated?)")
        attested = 0
        last = -1
        for lineno, line in enumerate(lines, 1):
            where = f"{BODIES} line {lineno}"
            try:
                entry = loads(line)
                idx = entry.get("index") if isinstance(entry, dict) else None
                if type(idx) is not int:
                    raise Malformed('not an object with an integer "index"')
                where = f"decrypted bodies of record {idx}"
                if idx <= last:
                    raise Malformed(f"index is not strictly greater than the previous line's ({last})")
                last = idx
                if idx in self.bad_records:
                    continue  # the record itself is already reported
                if idx not in leaves:
                    raise Malformed(f"no such record in {RECORDS}")
                bodies = entry.get("bodies")
                sealed = leaves[idx].get("bodies")
                if not isinstance(bodies, dict) or not bodies or not isinstance(sealed, dict):
                    raise Malformed('"bodies" is empty, not an object, or the record has no bodies')
                for name, body in bodies.items():
                    try:
                        value = unpack_untrusted_body(body)
                    except ValueError as exc:
                        raise Malformed(f"body {name!r} {exc}") from None
                    env = sealed.get(name)
                    if not isinstance(env, dict):
                        raise Malformed(f"body {name!r} is not in the record")
                    if "b64" in env:  # stored in the clear: the leaf itself vouches for it
                        if env.get("b64") != base64.b64encode(value).decode("ascii"):
                            raise Malformed(f"body {name!r} differs from the one stored in the leaf")
                    else:
                        attested += 1
            except Malformed as exc:
                self.problem(where, str(exc))
                continue
            self.report.bodies += 1
        if attested:
            self.report.notes.append(f"{attested} decrypted body(ies) are vouched for by the manifest signature "
                                     "only (the log stores them encrypted; the Merkle proofs cover the ciphertext)")
