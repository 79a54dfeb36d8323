"""Certificate method: a chain in the bundle, validated up to a root the caller trusts."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.integrity import sign_model, verify_model

from .conftest import load_bundle

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path
    key_path: Path


def issue(
    folder: Path, name: str, issuer: Issued | None, *, ca: bool, digital_signature: bool = True,
    not_after: dt.datetime | None = None, curve: ec.EllipticCurve | None = None,
) -> Issued:
    """One certificate written as PEM; self-signed when `issuer` is None."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Oversight Test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 10 * DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    path, key_path = folder / f"{name}.crt.pem", folder / f"{name}.key.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Issued(cert, key, path, key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    d = tmp_path_factory.mktemp("pki")
    root = issue(d, "root", None, ca=True)
    inter = issue(d, "intermediate", root, ca=True)
    return {
        "root": root,
        "inter": inter,
        "leaf": issue(d, "leaf", inter, ca=False, curve=ec.SECP384R1()),
        "expired": issue(d, "expired-leaf", inter, ca=False, not_after=NOW - DAY),
        "nosig": issue(d, "no-digital-signature", inter, ca=False, digital_signature=False),
        "other_root": issue(d, "other-root", None, ca=True),
        "not_ca": issue(d, "not-a-ca", root, ca=False),
    }


def sign_with(model: Path, leaf: Issued, chain: list[Issued], sig: Path) -> Path:
    sign_model(model, leaf.key_path, signature_path=sig, certificate_path=leaf.path, certificate_chain_paths=[c.path for c in chain])
    return sig


def test_valid_chain_verifies(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["leaf"], [pki["inter"]], tmp_path / "m.sig")
    assert len(load_bundle(sig)["verificationMaterial"]["x509CertificateChain"]["certificates"]) == 2
    report = verify_model(small_model, signature_path=sig, cert_root_path=pki["root"].path)
    assert report.valid, report.problems
    assert report.method == "certificate" and "CN=leaf" in (report.signer or "")


def test_chain_including_the_root_verifies(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["leaf"], [pki["inter"], pki["root"]], tmp_path / "m.sig")
    assert verify_model(small_model, signature_path=sig, cert_root_path=pki["root"].path).valid


def test_tampered_model_with_valid_chain_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["leaf"], [pki["inter"]], tmp_path / "m.sig")
    (small_model / "config.json").write_text("{}")
    report = verify_model(small_model, signature_path=sig, cert_root_path=pki["root"].path)
    assert not report.valid and [(d.path, d.kind) for d in report.differences] == [("config.json", "changed")]


def _problems(model: Path, sig: Path, root: Issued) -> list[str]:
    report = verify_model(model, signature_path=sig, cert_root_path=root.path)
    assert not report.valid
    return report.problems


def test_expired_leaf_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["expired"], [pki["inter"]], tmp_path / "m.sig")
    assert any("expired-leaf" in p and "expired on" in p for p in _problems(small_model, sig, pki["root"]))


def test_unrelated_root_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["leaf"], [pki["inter"]], tmp_path / "m.sig")
    assert any("not issued by the trusted root" in p for p in _problems(small_model, sig, pki["other_root"]))


def test_missing_intermediate_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["leaf"], [], tmp_path / "m.sig")
    assert any("not issued by the trusted root" in p for p in _problems(small_model, sig, pki["root"]))


def test_leaf_without_digital_signature_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    sig = sign_with(small_model, pki["nosig"], [pki["inter"]], tmp_path / "m.sig")
    assert any("digitalSignature" in p for p in _problems(small_model, sig, pki["root"]))


def test_intermediate_without_ca_flag_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    fake_leaf = issue(tmp_path, "under-not-ca", pki["not_ca"], ca=False)
    sig = sign_with(small_model, fake_leaf, [pki["not_ca"]], tmp_path / "m.sig")
    assert any("not-a-ca" in p and "not a CA" in p for p in _problems(small_model, sig, pki["root"]))


def test_swapped_leaf_certificate_is_invalid(small_model: Path, pki, tmp_path: Path) -> None:
    """Another valid certificate of the same CA cannot take credit for the signature."""
    sig = sign_with(small_model, pki["leaf"], [pki["inter"]], tmp_path / "m.sig")
    bundle = load_bundle(sig)
    impostor = issue(tmp_path, "impostor", pki["inter"], ca=False).cert.public_bytes(serialization.Encoding.DER)
    bundle["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"] = base64.b64encode(impostor).decode()
    sig.write_text(json.dumps(bundle))
    assert any("signature does not verify" in p for p in _problems(small_model, sig, pki["root"]))


def test_key_bundle_with_cert_root_and_cert_bundle_with_key_are_invalid(small_model: Path, pki, ec_keys, tmp_path: Path) -> None:
    key_sig = tmp_path / "key.sig"
    sign_model(small_model, ec_keys["p256"][0], signature_path=key_sig)
    assert any("bare key" in p for p in _problems(small_model, key_sig, pki["root"]))
    cert_sig = sign_with(small_model, pki["leaf"], [pki["inter"]], tmp_path / "cert.sig")
    leaf_pub = tmp_path / "leaf.pub.pem"
    leaf_pub.write_bytes(pki["leaf"].cert.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    report = verify_model(small_model, signature_path=cert_sig, public_key_path=leaf_pub)
    assert not report.valid and any("certificate chain" in p for p in report.problems)


def test_certificate_not_matching_the_key_is_refused_when_signing(small_model: Path, pki, ec_keys, tmp_path: Path) -> None:
    from gateway.integrity import IntegrityInputError

    with pytest.raises(IntegrityInputError, match="does not hold the public key"):
        sign_model(small_model, ec_keys["p256"][0], signature_path=tmp_path / "m.sig", certificate_path=pki["leaf"].path)


def test_interop_with_model_signing_certificate_method(small_model: Path, pki, tmp_path: Path) -> None:
    model_signing = pytest.importorskip("model_signing")
    tool_sig = tmp_path / "tool.sig"
    model_signing.signing.Config().use_certificate_signer(
        private_key=pki["leaf"].key_path, signing_certificate=pki["leaf"].path, certificate_chain=[pki["inter"].path]
    ).sign(small_model, tool_sig)
    assert verify_model(small_model, signature_path=tool_sig, cert_root_path=pki["root"].path).valid
    ours = sign_with(small_model, pki["leaf"], [pki["inter"]], tmp_path / "ours.sig")
    model_signing.verifying.Config().use_certificate_verifier(certificate_chain=[pki["root"].path]).verify(small_model, ours)
