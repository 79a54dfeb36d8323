"""A fleet bundle: one export over several logs, each part a complete single-log bundle.

    README.txt          what the bundle is and how to verify it
    manifest.json       format oversight-gateway-evidence-fleet-bundle; every file's sha256 and size;
                        a description naming each part's log, records and checkpoint
    manifest.sig        base64 Ed25519 signature over manifest.json
    manifest-key.pub    the exporter's public key (it also signs every part's manifest)
    logs/NN.tar.gz      one bundle per log (see `format`), its records proven against that
                        log's own signed checkpoint, with that log's witnesses' cosignatures
    <extras>            the exporter's context files (config, policy, ...)

Each part verifies on its own too; the fleet layer adds that no part was removed, added
or swapped, and that every part was made by the same exporter.
"""

from __future__ import annotations

import base64
import json
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..crypto import public_pem
from ..errors import BundleError
from .archive import Spool, read_members, write_archive
from .format import MANIFEST, MANIFEST_KEY, MANIFEST_SIG, README
from .verifier import BundleReport, Witnessing, _BundleVerifier, verify_log_bundle
from .writer import BundleSummary

FLEET_FORMAT = "oversight-gateway-evidence-fleet-bundle"
FLEET_VERSION = 1
PART_PREFIX = "logs/"


@dataclass(frozen=True)
class FleetSummary:
    path: Path
    sha256: str
    size: int
    records: int
    parts: tuple[BundleSummary, ...]


def write_fleet_bundle(out_path: Path, parts: Sequence[BundleSummary], *, signing_key: Ed25519PrivateKey,
                       extras: dict[str, bytes], description: dict) -> FleetSummary:
    """Pack single-log bundles (written with the same `signing_key`) into one fleet bundle, atomically."""
    names = [f"{PART_PREFIX}{n:02d}.tar.gz" for n in range(len(parts))]
    for name in extras:
        if name in (README, MANIFEST, MANIFEST_SIG, MANIFEST_KEY) or name.startswith(PART_PREFIX):
            raise ValueError(f"extra file name {name!r} is a fleet bundle file of its own")
    spools: list[Spool] = []
    try:
        def spool(data: bytes) -> Spool:
            spools.append(Spool.of(data))
            return spools[-1]

        files = {MANIFEST_KEY: spool(public_pem(signing_key.public_key()))}
        for name, part in zip(names, parts):
            files[name] = spool(part.path.read_bytes())
        for name in sorted(extras):
            files[name] = spool(extras[name])
        logs = [{"member": name, "origin": p.checkpoint.origin, "records": p.records, "witnesses": p.witnesses,
                 "checkpoint": {"size": p.checkpoint.size, "root": p.checkpoint.root.hex()}}
                for name, p in zip(names, parts)]
        created = time.time()
        total = sum(p.records for p in parts)
        desc = {**description, "created": created, "records": total, "logs": logs,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))}
        files[README] = spool(_readme(logs, total, sorted(extras)))
        manifest = (json.dumps({"format": FLEET_FORMAT, "version": FLEET_VERSION, "description": desc,
                                "files": [{"name": n, "sha256": f.sha256.hexdigest(), "size": f.size}
                                          for n, f in sorted(files.items())]},
                               indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
        signature = base64.b64encode(signing_key.sign(manifest)) + b"\n"
        order = [(README, files[README]), (MANIFEST, spool(manifest)), (MANIFEST_SIG, spool(signature))]
        order += [(n, f) for n, f in files.items() if n != README]
        digest, size = write_archive(Path(out_path), order, int(created))
        return FleetSummary(Path(out_path), digest, size, total, tuple(parts))
    finally:
        for s in spools:
            s.close()


def verify_bundle(path: Path, *, trusted_keys: list[Ed25519PublicKey] | None = None,
                  require_cosignatures: int = 0, witness_keys: list[Ed25519PublicKey] | None = None) -> BundleReport:
    """Check a bundle, of one log or of a fleet, offline; raises BundleError only when it is not a readable bundle.

    Without `trusted_keys` the signatures are checked against keys inside the bundle.
    `require_cosignatures` k: every log's records must be covered by checkpoints that k
    witnesses (`witness_keys`, else the keys in the bundle) cosigned and that the log
    proves consistent with the checkpoint used.
    """
    if trusted_keys is not None:
        trusted_keys = list(trusted_keys)
        if not trusted_keys:
            raise ValueError("trusted_keys is empty (pass None to use the keys inside the bundle)")
    if require_cosignatures < 0:
        raise ValueError("require_cosignatures must be >= 0")
    witnessing = Witnessing(require_cosignatures, list(witness_keys) if witness_keys else None)
    path = Path(path)
    if _is_fleet_bundle(path):
        return _FleetVerifier(path, trusted_keys, witnessing).run()
    return verify_log_bundle(path, trusted_keys, witnessing)


def _is_fleet_bundle(path: Path) -> bool:
    """True when the archive's manifest names the fleet format (anything unreadable: let the log verifier say so)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                if info.name.removeprefix("./") == MANIFEST and info.isfile() and info.size < 16 * 1024 * 1024:
                    f = tar.extractfile(info)
                    return f is not None and json.loads(f.read()).get("format") == FLEET_FORMAT
    except (OSError, tarfile.TarError, ValueError, AttributeError, EOFError):
        return False
    return False


class _Parsed:
    """The members a fleet verifier reads into memory: its manifest files and every part."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in (MANIFEST, MANIFEST_SIG, MANIFEST_KEY) or name.startswith(PART_PREFIX))


class _FleetVerifier(_BundleVerifier):
    format, version, required = FLEET_FORMAT, FLEET_VERSION, (README, MANIFEST_KEY)
    parsed = _Parsed()  # type: ignore[assignment]

    def run(self) -> BundleReport:
        self.members = read_members(self.path, self.parsed, self.problem)
        self.report.trust = "the given key(s)" if self.trusted is not None else "the keys inside the bundle only"
        self._check_manifest_signature()
        listed = self._parse_manifest()
        if listed is not None:
            self._check_files(listed)
        logs = self.report.description.get("logs")
        if not isinstance(logs, list) or not logs:
            self.problem(MANIFEST, 'no "logs" list naming the parts')
            return self.report
        named: set[str] = set()
        for n, entry in enumerate(logs):
            name = entry.get("member") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name.startswith(PART_PREFIX) or name in named:
                self.problem(MANIFEST, f'"logs" entry {n} does not name a part of its own ({name!r:.60})')
                continue
            named.add(name)
            self._part(name, entry)
        for name in self.members:
            if name.startswith(PART_PREFIX) and name not in named:
                self.problem(name, "is a part the manifest's \"logs\" does not name")
        if isinstance(self.report.description.get("records"), int) and self.report.description["records"] != self.report.records:
            self.problem(MANIFEST, f"says {self.report.description['records']} records, the parts hold {self.report.records}")
        return self.report

    def _part(self, name: str, entry: dict) -> None:
        data = self.data(name)
        if data is None:
            return  # missing: the file check reported it
        with tempfile.NamedTemporaryFile(suffix=".tar.gz") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                part = verify_log_bundle(Path(tmp.name), self.trusted, self.witnessing)
            except BundleError as exc:
                return self.problem(name, f"not a readable bundle ({exc})")
        part.path = Path(name)
        self.report.parts.append(part)
        self.report.records += part.records
        self.report.bodies += part.bodies
        for p in part.problems:
            self.problem(f"{name}: {p.where}", p.reason)
        cp = part.checkpoint
        said = entry.get("checkpoint") if isinstance(entry.get("checkpoint"), dict) else {}
        if cp is not None and (entry.get("origin"), said.get("size"), said.get("root")) != (cp.origin, cp.size, cp.root.hex()):
            self.problem(name, f"the manifest names log {entry.get('origin')!r} at size {said.get('size')}, the part "
                               f"holds {cp.origin!r} at size {cp.size} (a part was swapped)")
        if entry.get("records") != part.records:
            self.problem(name, f"the manifest says {entry.get('records')} records, the part holds {part.records}")
        if self.trusted is None and part.manifest_key != self.data(MANIFEST_KEY):
            self.problem(name, "its manifest is signed by another key than the fleet bundle's")


def _readme(logs: list[dict], total: int, extras: list[str]) -> bytes:
    parts = "".join(f"  {e['member']}  {e['origin']}: {e['records']} record(s), checkpoint size "
                    f"{e['checkpoint']['size']}, cosigned by {e['witnesses']} witness(es)\n" for e in logs)
    extra_lines = "".join(f"  {name}\n" for name in extras) or "  (none)\n"
    return f"""Oversight gateway evidence bundle of a fleet
============================================

Records:  {total}, from {len(logs)} log(s) (one per gateway replica):
{parts}
How to verify (needs only the oversight-gateway package, no network, no log):

    gateway evidence verify-bundle THIS.tar.gz [--key GATEWAY.pub ...] [--require-cosignatures K]

Each logs/NN.tar.gz is a complete bundle of one log (its README says what it
holds) and verifies on its own; the fleet manifest, signed by the exporter,
vouches that none was removed, added or swapped. --require-cosignatures K
demands that K other replicas witnessed (cosigned) each log up to its records.

Other files, added by the exporter (opaque; vouched for by the manifest):
{extra_lines}""".encode()
