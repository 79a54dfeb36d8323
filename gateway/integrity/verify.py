"""Verify a model folder against an OMS bundle and explain every difference.

The verdict is built from gates that must each be passed explicitly (bundle
parsed, signature authenticated, statement consistent, model compared); `valid`
is true only when all gates passed and no problem or difference was recorded,
so no early return or unforeseen path can yield a valid report by omission.
The statement is only read once its signature verified: an unauthenticated
manifest is never used to judge the files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.integrity import keys
from gateway.integrity.bundle import Bundle, envelope_problems, pae, parse_bundle
from gateway.integrity.certs import load_roots, name_of, validate_chain
from gateway.integrity.errors import BundleFormatError, IntegrityInputError, ModelReadError
from gateway.integrity.manifest import GIT_PATHS, Resource, build_resources, check_entry, list_files, normalise_ignores
from gateway.integrity.sign import inside
from gateway.integrity.statement import Statement, parse_statement, statement_problems

GATES = frozenset({"bundle", "signature", "statement", "model"})


@dataclass(frozen=True)
class Difference:
    path: str
    kind: str  # changed | missing | extra


@dataclass(frozen=True)
class VerificationReport:
    valid: bool
    model: str
    signature: str
    method: str  # key | certificate
    signer: str | None = None  # key hint or certificate subject, once the signature verified
    root_digest: str | None = None
    hash_algorithm: str | None = None
    serialization: str | None = None  # files | shards
    shard_size: int | None = None
    resources: int = 0
    differences: list[Difference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class _Trust:
    """What the caller trusts: one public key, or a set of root certificates."""

    key: ec.EllipticCurvePublicKey | None = None
    roots: tuple[x509.Certificate, ...] = ()

    @property
    def method(self) -> str:
        return "key" if self.key is not None else "certificate"


@dataclass
class _Run:
    """Mutable state of one verification; `report()` turns it into the verdict."""

    model: Path
    signature: Path
    trust: _Trust
    passed: set[str] = field(default_factory=set)
    facts: dict[str, object] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def report(self) -> VerificationReport:
        valid = self.passed == GATES and not self.problems and not self.differences
        return VerificationReport(
            valid=valid, model=str(self.model), signature=str(self.signature), method=self.trust.method,
            differences=self.differences, problems=self.problems, **self.facts,  # type: ignore[arg-type]
        )


def verify_model(
    model_dir: str | os.PathLike[str],
    *,
    signature_path: str | os.PathLike[str],
    public_key_path: str | os.PathLike[str] | None = None,
    cert_root_path: str | os.PathLike[str] | None = None,
    ignore_unsigned: bool = False,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    allow_symlinks: bool = False,
) -> VerificationReport:
    """Check the bundle and the model; an invalid model gives `valid=False`, never raises.

    Raises IntegrityInputError only for unusable input: missing model or
    signature file, unreadable or unsupported key or root certificate.
    """
    model = Path(model_dir)
    if not model.exists():
        raise IntegrityInputError(f"model {model} does not exist")
    data = _read_signature(Path(signature_path))
    run = _Run(model, Path(signature_path), _load_trust(public_key_path, cert_root_path))
    caller_ignores = normalise_ignores(model, ignore_paths) if model.is_dir() else ()
    statement = _authenticated_statement(run, data)
    if statement is not None:
        _compare_model(run, statement, caller_ignores, ignore_unsigned, allow_symlinks)
    return run.report()


def _read_signature(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IntegrityInputError(f"cannot read signature {path}: {exc.strerror or exc}") from None


def _load_trust(public_key_path: str | os.PathLike[str] | None, cert_root_path: str | os.PathLike[str] | None) -> _Trust:
    if (public_key_path is None) == (cert_root_path is None):
        raise IntegrityInputError("give exactly one of a public key or a root certificate")
    if public_key_path is not None:
        return _Trust(key=keys.load_public_key(public_key_path))
    return _Trust(roots=tuple(load_roots(cert_root_path)))  # type: ignore[arg-type]


def _authenticated_statement(run: _Run, data: bytes) -> Statement | None:
    """The signed statement once bundle, signature and statement checks all pass."""
    try:
        bundle = parse_bundle(data)
    except BundleFormatError as exc:
        run.problems.append(str(exc))
        return None
    run.passed.add("bundle")
    run.problems += envelope_problems(bundle)
    _authenticate(run, bundle)
    if run.problems or "signature" not in run.passed:
        return None
    try:
        statement = parse_statement(bundle.payload)
    except BundleFormatError as exc:
        run.problems.append(str(exc))
        return None
    run.facts.update(
        root_digest=statement.root_digest, hash_algorithm=statement.serialization.hash_type,
        serialization=statement.serialization.method, shard_size=statement.serialization.shard_size,
        resources=len(statement.resources),
    )
    run.problems += statement_problems(statement)
    if run.problems:
        return None
    run.passed.add("statement")
    return statement


def _authenticate(run: _Run, bundle: Bundle) -> None:
    """Find the verification key the caller trusts, then check the DSSE signature."""
    key, signer, problems = _key_for(run.trust, bundle)
    run.problems += problems
    if key is None or problems or len(bundle.signatures) != 1:
        return
    if not keys.verify(key, bundle.signatures[0], pae(bundle.payload_type, bundle.payload)):
        run.problems.append("signature does not verify: the signed statement was altered, or another key signed it")
        return
    run.passed.add("signature")
    run.facts["signer"] = signer


def _key_for(trust: _Trust, bundle: Bundle) -> tuple[ec.EllipticCurvePublicKey | None, str | None, list[str]]:
    if trust.key is not None:
        return trust.key, keys.key_hint(trust.key), _key_problems(trust.key, bundle)
    if bundle.has_public_key:
        return None, None, ["bundle is signed with a bare key, not a certificate; verify it with the public key"]
    leaf, problems = validate_chain(bundle.certificates, list(trust.roots))
    if leaf is None or problems:
        return None, None, problems
    return leaf.public_key(), name_of(leaf), []  # type: ignore[return-value]


def _key_problems(key: ec.EllipticCurvePublicKey, bundle: Bundle) -> list[str]:
    """The bundle must name the given key (hint), or at least not another one."""
    if bundle.certificates:
        return ["bundle is signed with a certificate chain; verify it with the root certificate"]
    if not bundle.has_public_key:
        return ["bundle has no verificationMaterial.publicKey"]
    hint = keys.key_hint(key)
    if bundle.key_hint is not None and bundle.key_hint.lower() != hint:
        return [f"bundle was signed by key {bundle.key_hint}, not by the given public key ({hint})"]
    if bundle.raw_public_key is not None:  # bundles before model_signing 1.1
        embedded = keys.parse_public_key(bundle.raw_public_key)
        if embedded is not None and not keys.same_key(embedded, key):
            return ["bundle's publicKey.rawBytes is another key than the given public key"]
    return []


def _compare_model(run: _Run, st: Statement, caller_ignores: Sequence[str], ignore_unsigned: bool, allow_symlinks: bool) -> None:
    """Hash the model the way the statement says and record every difference."""
    ser = st.serialization
    ignores = {*GIT_PATHS, *ser.ignore_paths, *caller_ignores}
    sig_rel = inside(run.model, run.signature) if run.model.is_dir() else None
    if sig_rel:
        ignores.add(sig_rel)
    try:
        if ignore_unsigned:
            files, missing = _signed_files(run.model, st, allow_symlinks)
        else:
            files, missing = list_files(run.model, sorted(ignores), allow_symlinks=allow_symlinks), []
        actual = build_resources(run.model, files, ser)
    except ModelReadError as exc:
        run.problems.append(str(exc))
        return
    run.differences += diff(st.resources, actual, also_missing=missing)
    run.passed.add("model")


def _signed_files(model: Path, st: Statement, allow_symlinks: bool) -> tuple[list[str], list[str]]:
    """Files the statement lists that exist (checked like a walk would), and those that do not."""
    present, missing = [], []
    for rel in sorted({r.path for r in st.resources}):
        path = model if rel == "." else model / rel
        if not os.path.lexists(path):
            missing.append(rel)
            continue
        check_entry(path, rel, allow_symlinks)  # same symlink and special-file rules as a walk
        present.append(rel)
    return present, missing


def _by_file(resources: Iterable[Resource]) -> dict[str, dict[str, tuple[str, bytes]]]:
    out: dict[str, dict[str, tuple[str, bytes]]] = {}
    for res in resources:
        out.setdefault(res.path, {})[res.name] = (res.algorithm, res.digest)
    return out


def diff(expected: Iterable[Resource], actual: Iterable[Resource], *, also_missing: Iterable[str] = ()) -> list[Difference]:
    """File-level differences: for shards, any differing shard marks its file changed."""
    exp, act = _by_file(expected), _by_file(actual)
    missing = set(also_missing)
    out = []
    for path in sorted(exp.keys() | act.keys() | missing, key=lambda p: PurePosixPath(p).parts):
        if path not in act and (path in exp or path in missing):
            out.append(Difference(path, "missing"))
        elif path not in exp:
            out.append(Difference(path, "extra"))
        elif exp[path] != act[path]:
            out.append(Difference(path, "changed"))
    return out
