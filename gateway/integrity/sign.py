"""Sign a model folder into an OMS bundle the reference tool can verify."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.integrity import keys
from gateway.integrity.bundle import PAYLOAD_TYPE, build_bundle, pae
from gateway.integrity.certs import load_pem_chain, name_of
from gateway.integrity.errors import IntegrityInputError
from gateway.integrity.hashing import check_algorithm
from gateway.integrity.manifest import GIT_PATHS, Serialization, build_resources, list_files, normalise_ignores, root_digest
from gateway.integrity.statement import build_statement


@dataclass(frozen=True)
class SignResult:
    signature_path: str
    root_digest: str  # hex SHA-256, the statement's subject digest
    signer: str  # key hint, or the certificate subject
    hash_algorithm: str
    serialization: str  # files | shards
    shard_size: int | None
    files: int
    resources: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def default_signature_path(model: Path) -> Path:
    """`model.sig` inside a model folder (as the reference tool); `FILE.sig` beside a file."""
    return model / "model.sig" if model.is_dir() else model.with_name(model.name + ".sig")


def model_name(model: Path) -> str:
    """The subject name: the folder's own name, resolved when given as `.` or `..`."""
    return model.name if model.name not in ("", "..") else os.path.basename(model.resolve())


def inside(model: Path, path: Path) -> str | None:
    """`path` relative to the model folder as POSIX, or None when outside it."""
    try:
        return path.resolve().relative_to(model.resolve()).as_posix()
    except ValueError:
        return None


def sign_model(
    model_dir: str | os.PathLike[str],
    private_key_pem_path: str | os.PathLike[str],
    *,
    signature_path: str | os.PathLike[str] | None = None,
    hash_algorithm: str = "sha256",
    shard_size: int | None = None,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    allow_symlinks: bool = False,
    certificate_path: str | os.PathLike[str] | None = None,
    certificate_chain_paths: Sequence[str | os.PathLike[str]] = (),
) -> SignResult:
    """Hash the model, sign the statement with the key, write the bundle.

    With `certificate_path` the bundle carries the certificate chain (leaf, then
    `certificate_chain_paths`) instead of a key hint. Raises IntegrityInputError
    for anything unusable: a bad key, an unreadable or refused file in the model.
    """
    model = _existing(Path(model_dir))
    sig_path = Path(signature_path) if signature_path else default_signature_path(model)
    key = keys.load_private_key(private_key_pem_path)
    certs = _certificates(key, certificate_path, certificate_chain_paths)
    ser = _serialization(model, sig_path, check_algorithm(hash_algorithm), shard_size, ignore_paths, allow_symlinks)
    files = list_files(model, ser.ignore_paths, allow_symlinks=allow_symlinks)
    resources = build_resources(model, files, ser)
    payload = build_statement(model_name(model), ser, resources)
    signature = keys.sign(key, pae(PAYLOAD_TYPE, payload))
    hint = keys.key_hint(key.public_key())
    _write_atomic(sig_path, build_bundle(payload, signature, key_hint=hint, certificates=tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)))
    return SignResult(
        signature_path=str(sig_path),
        root_digest=root_digest(resources).hex(),
        signer=name_of(certs[0]) if certs else hint,
        hash_algorithm=ser.hash_type,
        serialization=ser.method,
        shard_size=ser.shard_size,
        files=len(files),
        resources=len(resources),
    )


def _existing(model: Path) -> Path:
    if not model.exists():
        raise IntegrityInputError(f"model {model} does not exist")
    return model


def _serialization(model: Path, sig_path: Path, algorithm: str, shard_size: int | None, ignore_paths: Iterable[str | os.PathLike[str]], allow_symlinks: bool) -> Serialization:
    """The recorded serialization: git paths, caller paths and the bundle itself are ignored."""
    if shard_size is not None and (isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0):
        raise IntegrityInputError(f"shard size must be a positive number of bytes, got {shard_size!r}")
    if shard_size is not None and algorithm == "blake3":
        raise IntegrityInputError("blake3 is hashed per file (it is parallel inside); drop the shard size")
    ignores: set[str] = set()
    if model.is_dir():  # a single-file model has nothing to ignore
        ignores = {*GIT_PATHS, *normalise_ignores(model, ignore_paths)}
        sig_rel = inside(model, sig_path)
        if sig_rel:
            ignores.add(sig_rel)
    method = "shards" if shard_size else "files"
    return Serialization(method, algorithm, shard_size, allow_symlinks, tuple(sorted(ignores)))


def _certificates(key: ec.EllipticCurvePrivateKey, leaf_path: str | os.PathLike[str] | None, chain_paths: Sequence[str | os.PathLike[str]]) -> list[x509.Certificate]:
    """Leaf certificate (matching the key) followed by the chain, or [] for the key method."""
    if leaf_path is None:
        if chain_paths:
            raise IntegrityInputError("a certificate chain needs the signing certificate too")
        return []
    leaf, *rest = load_pem_chain([leaf_path])
    if not keys.same_key(leaf.public_key(), key.public_key()):
        raise IntegrityInputError(f"certificate {leaf_path} does not hold the public key of the private key")
    return [leaf, *rest, *load_pem_chain(chain_paths)]


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the target then rename, so a crash never leaves half a bundle."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".model-sig-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # a bundle is public; mkstemp makes it 0600
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise IntegrityInputError(f"cannot write signature {path}: {exc.strerror or exc}") from None
