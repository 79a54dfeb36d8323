"""Certificate chain validation for the OMS certificate method.

The bundle carries the chain leaf first. We walk it upwards until a certificate
is issued by one of the trusted roots, checking at each step that the issuer
really signed the child, and then check every certificate on the path: validity
period (at verification time, since OMS bundles carry no trusted timestamp), CA
basic constraints, path length and keyCertSign on issuers, digitalSignature on
the leaf, no unknown critical extension. Every failure is collected and returned
as a problem string naming the certificate.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from gateway.integrity.errors import IntegrityInputError
from gateway.integrity.keys import unsupported_key


def load_roots(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Trusted root certificates from a PEM file (one or more)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IntegrityInputError(f"cannot read root certificate {path}: {exc.strerror or exc}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise IntegrityInputError(f"{path} holds no PEM certificate") from None


def load_pem_chain(paths: Sequence[str | os.PathLike[str]]) -> list[x509.Certificate]:
    """Certificates from PEM files, in order (used when signing)."""
    out: list[x509.Certificate] = []
    for path in paths:
        out.extend(load_roots(path))
    return out


def name_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s name and key match `child`'s issuer and signature."""
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _build_path(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> tuple[list[x509.Certificate], list[str]]:
    """Leaf .. trusted root, following the bundle order; or the reason there is none."""
    path = [chain[0]]
    for nxt in [*chain[1:], None]:
        current = path[-1]
        anchor = next((r for r in roots if _issued_by(current, r)), None)
        if anchor is not None:
            return path + ([] if anchor == current else [anchor]), []
        if nxt is None or not _issued_by(current, nxt):
            return [], [f"certificate {name_of(current)!r} is not issued by the trusted root nor by the next certificate in the chain"]
        path.append(nxt)
    return [], ["certificate chain does not reach the trusted root"]


def _validity_problems(cert: x509.Certificate, now: dt.datetime) -> list[str]:
    if now < cert.not_valid_before_utc:
        return [f"certificate {name_of(cert)!r} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"]
    if now > cert.not_valid_after_utc:
        return [f"certificate {name_of(cert)!r} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"]
    return []


def _ext(cert: x509.Certificate, kind: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _issuer_problems(issuer: x509.Certificate, below: int) -> list[str]:
    """An issuer must be a CA allowed to sign certificates; `below` CAs sit under it."""
    bc = _ext(issuer, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        return [f"certificate {name_of(issuer)!r} issues certificates but is not a CA (basic constraints)"]
    problems = []
    if bc.path_length is not None and below > bc.path_length:
        problems.append(f"certificate {name_of(issuer)!r} allows {bc.path_length} intermediate CAs below it, the chain has {below}")
    ku = _ext(issuer, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        problems.append(f"certificate {name_of(issuer)!r} is not allowed to sign certificates (key usage)")
    return problems


def _leaf_problems(leaf: x509.Certificate) -> list[str]:
    ku = _ext(leaf, x509.KeyUsage)
    problems = []
    if not isinstance(ku, x509.KeyUsage) or not ku.digital_signature:
        problems.append(f"signing certificate {name_of(leaf)!r} does not allow digitalSignature (key usage)")
    why = unsupported_key(leaf.public_key())
    if why:
        problems.append(f"signing certificate {name_of(leaf)!r} holds {why}")
    return problems


def _critical_problems(cert: x509.Certificate) -> list[str]:
    return [
        f"certificate {name_of(cert)!r} has an unknown critical extension {ext.oid.dotted_string}"
        for ext in cert.extensions
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension)
    ]


def validate_chain(chain_der: Sequence[bytes], roots: list[x509.Certificate], *, now: dt.datetime | None = None) -> tuple[x509.Certificate | None, list[str]]:
    """(leaf, []) when the chain is valid up to one of `roots`, else (leaf or None, problems)."""
    if not chain_der:
        return None, ["bundle has no certificate; the certificate method needs x509CertificateChain"]
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        return None, [f"a certificate in the bundle is not valid DER: {exc}"]
    path, problems = _build_path(chain, roots)
    if problems:
        return chain[0], problems
    now = now or dt.datetime.now(dt.UTC)
    for cert in path:
        problems += _validity_problems(cert, now) + _critical_problems(cert)
    for i, issuer in enumerate(path[1:], start=1):
        problems += _issuer_problems(issuer, below=i - 1)
    return chain[0], problems + _leaf_problems(chain[0])
