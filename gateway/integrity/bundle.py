"""Sigstore bundle v0.3 (JSON) with a DSSE envelope: parse, check, build.

Only the envelope lives here; the in-toto statement inside it is `statement.py`.
Parsing never trusts the shape of the JSON: every field is type-checked, and any
deviation is a `BundleFormatError` whose message names the field, so a truncated
or hand-edited bundle becomes one clear problem, never a KeyError.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from gateway.integrity.errors import BundleFormatError

MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
MEDIA_TYPES = (MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3")
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_BUNDLE_BYTES = 256 << 20  # a bundle of a million shards is ~200 MB


@dataclass(frozen=True)
class Bundle:
    """What a verifier needs from a bundle, decoded but not yet trusted."""

    media_type: str
    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]
    key_hint: str | None = None
    raw_public_key: bytes | None = None
    has_public_key: bool = False
    certificates: tuple[bytes, ...] = ()  # DER, leaf first


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature actually covers."""
    ptype = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)


def b64decode(value: object, where: str) -> bytes:
    """Standard or URL-safe base64 (padding optional), as protobuf JSON allows."""
    if not isinstance(value, str):
        raise BundleFormatError(f"{where} is not a base64 string")
    padded = value + "=" * (-len(value) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise BundleFormatError(f"{where} is not valid base64")


def _field(obj: dict[str, Any], key: str, kind: type, where: str, *, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        labels: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
        label = labels.get(kind, kind.__name__)
        raise BundleFormatError(f"{where}.{key} is missing or not {label}")
    return value


def load_json(data: bytes, what: str) -> Any:
    """JSON from bytes, every failure (encoding, syntax, nesting) as BundleFormatError."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"{what} is larger than {MAX_BUNDLE_BYTES >> 20} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleFormatError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BundleFormatError(f"{what} is not valid JSON (truncated or corrupted?): {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BundleFormatError(f"{what} is nested too deeply") from None


def parse_bundle(data: bytes) -> Bundle:
    """Decode a bundle file. Checks shape only; `envelope_problems` checks values."""
    doc = load_json(data, "signature bundle")
    if not isinstance(doc, dict):
        raise BundleFormatError("signature bundle is not a JSON object")
    material = _field(doc, "verificationMaterial", dict, "bundle")
    envelope = doc.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        other = " (it holds a messageSignature)" if "messageSignature" in doc else ""
        raise BundleFormatError(f"bundle has no dsseEnvelope{other}; OMS signatures are DSSE envelopes")
    sigs = _field(envelope, "signatures", list, "dsseEnvelope")
    return Bundle(
        media_type=_field(doc, "mediaType", str, "bundle"),
        payload_type=_field(envelope, "payloadType", str, "dsseEnvelope"),
        payload=b64decode(envelope.get("payload"), "dsseEnvelope.payload"),
        signatures=tuple(_signature(s, i) for i, s in enumerate(sigs)),
        certificates=_certificates(material),
        **_public_key(material),
    )


def _signature(entry: object, index: int) -> bytes:
    where = f"dsseEnvelope.signatures[{index}]"
    if not isinstance(entry, dict):
        raise BundleFormatError(f"{where} is not an object")
    return b64decode(entry.get("sig"), f"{where}.sig")


def _public_key(material: dict[str, Any]) -> dict[str, Any]:
    key = material.get("publicKey")
    if key is None:
        return {}
    if not isinstance(key, dict):
        raise BundleFormatError("verificationMaterial.publicKey is not an object")
    hint = _field(key, "hint", str, "verificationMaterial.publicKey", required=False)
    raw = key.get("rawBytes")
    raw_bytes = None if raw is None else b64decode(raw, "verificationMaterial.publicKey.rawBytes")
    return {"key_hint": hint or None, "raw_public_key": raw_bytes, "has_public_key": True}


def _certificates(material: dict[str, Any]) -> tuple[bytes, ...]:
    where = "verificationMaterial.x509CertificateChain"
    chain = material.get("x509CertificateChain")
    if chain is None:
        single = material.get("certificate")  # v0.3 single-certificate form
        chain = None if single is None else {"certificates": [single]}
        where = "verificationMaterial.certificate"
    if chain is None:
        return ()
    if not isinstance(chain, dict):
        raise BundleFormatError(f"{where} is not an object")
    certs = _field(chain, "certificates", list, where)
    out = []
    for i, cert in enumerate(certs):
        if not isinstance(cert, dict):
            raise BundleFormatError(f"{where}.certificates[{i}] is not an object")
        out.append(b64decode(cert.get("rawBytes"), f"{where}.certificates[{i}].rawBytes"))
    return tuple(out)


def envelope_problems(bundle: Bundle) -> list[str]:
    """What is wrong with the bundle's declared types and signature count."""
    problems = []
    if bundle.media_type not in MEDIA_TYPES:
        problems.append(f"bundle media type is {bundle.media_type!r}, expected {MEDIA_TYPE!r}")
    if bundle.payload_type != PAYLOAD_TYPE:
        problems.append(f"DSSE payload type is {bundle.payload_type!r}, expected {PAYLOAD_TYPE!r}")
    if len(bundle.signatures) != 1:
        problems.append(f"DSSE envelope has {len(bundle.signatures)} signatures, expected exactly one")
    if bundle.has_public_key and bundle.certificates:
        problems.append("bundle carries both a public key and a certificate chain; expected one")
    return problems


def build_bundle(payload: bytes, signature: bytes, *, key_hint: str | None = None, certificates: tuple[bytes, ...] = ()) -> str:
    """Bundle JSON text in the form the reference tool writes and reads."""
    if certificates:
        material: dict[str, Any] = {
            "x509CertificateChain": {"certificates": [{"rawBytes": _b64(c)} for c in certificates]},
        }
    else:
        material = {"publicKey": {"hint": key_hint or ""}}
    material["tlogEntries"] = []
    doc = {
        "mediaType": MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        },
    }
    return json.dumps(doc, indent=2) + "\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
