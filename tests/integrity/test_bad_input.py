"""Bad input: each case is a clear problem (invalid) or an input error, never valid, never a crash."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.integrity import IntegrityInputError, sign_model, verify_model

from .conftest import VECTOR_MODEL, VECTOR_PUB, VECTOR_SIG, resign, statement_of, write_key

# --- the bundle file itself -------------------------------------------------------------


def _verify_text(tmp_path: Path, text: str | bytes, model: Path = VECTOR_MODEL, pub: Path = VECTOR_PUB):
    sig = tmp_path / "bad.sig"
    sig.write_bytes(text if isinstance(text, bytes) else text.encode())
    return verify_model(model, signature_path=sig, public_key_path=pub)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        (VECTOR_SIG.read_text()[:700], "not valid JSON"),  # truncated
        ("[1, 2]", "not a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("{}", "verificationMaterial"),
        ('{"mediaType": "x", "verificationMaterial": {}, "messageSignature": {}}', "no dsseEnvelope"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bundle_is_a_clear_problem(tmp_path: Path, text: str | bytes, expected: str) -> None:
    report = _verify_text(tmp_path, text)
    assert not report.valid
    assert len(report.problems) == 1 and expected in report.problems[0], report.problems


def _edited_bundle(tmp_path: Path, edit) -> object:
    bundle = json.loads(VECTOR_SIG.read_text())
    edit(bundle)
    return _verify_text(tmp_path, json.dumps(bundle))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b["dsseEnvelope"].update(payload="not base64!"), "dsseEnvelope.payload is not valid base64"),
        (lambda b: b["dsseEnvelope"].update(payload=42), "dsseEnvelope.payload is not a base64 string"),
        (lambda b: b["dsseEnvelope"].update(signatures=[]), "0 signatures"),
        (lambda b: b["dsseEnvelope"]["signatures"].append(dict(b["dsseEnvelope"]["signatures"][0])), "2 signatures"),
        (lambda b: b["dsseEnvelope"].update(signatures="x"), "signatures is missing or not a list"),
        (lambda b: b.update(mediaType="application/vnd.dev.sigstore.bundle.v0.1+json"), "media type"),
        (lambda b: b["dsseEnvelope"].update(payloadType="application/json"), "payload type"),
        (lambda b: b.update(verificationMaterial=[]), "verificationMaterial is missing"),
        (lambda b: b["verificationMaterial"].update(publicKey="abc"), "publicKey is not an object"),
        (lambda b: b["verificationMaterial"].pop("publicKey"), "no verificationMaterial.publicKey"),
    ],
)
def test_broken_bundle_fields_are_named(tmp_path: Path, edit, expected: str) -> None:
    report = _edited_bundle(tmp_path, edit)
    assert not report.valid and any(expected in p for p in report.problems), report.problems


def test_random_corruption_never_yields_valid(tmp_path: Path) -> None:
    """Flip, cut or insert bytes anywhere in the bundle: never valid, never an exception."""
    original = VECTOR_SIG.read_bytes()
    rng = random.Random(1234)
    signed_region = original.index(b'"payload"'), original.index(b'"payloadType"')
    for i in range(150):
        data = bytearray(original)
        pos = rng.randrange(*signed_region) if i % 2 else rng.randrange(len(data))
        kind = i % 3
        if kind == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[pos:]
        else:
            data[pos:pos] = rng.choice([b"A", b"=", b"\\", b"0"])
        if bytes(data) == original:
            continue
        report = _verify_text(tmp_path, bytes(data))
        assert not report.valid or _same_signed_content(bytes(data), original), (i, pos, report.problems)


def _same_signed_content(a: bytes, b: bytes) -> bool:
    """Edits outside what is signed or checked (whitespace, unused keys) are harmless."""

    def signed(data: bytes) -> tuple:
        doc = json.loads(data)
        env = doc["dsseEnvelope"]
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
        return base64.b64decode(env["payload"], validate=True), env["payloadType"], sigs, doc["verificationMaterial"]["publicKey"], doc["mediaType"]

    try:
        return signed(a) == signed(b)
    except (ValueError, KeyError, TypeError):
        return False


# --- statements that are properly signed but wrong --------------------------------------


@pytest.fixture
def signed_by_us(tmp_path: Path, ec_keys, vector_copy: Path):
    """(statement dict of the vector model, signer(statement) -> report with our key)."""
    priv, pub = ec_keys["p256"]
    statement = statement_of(VECTOR_SIG)

    def check(st, **kw):
        return verify_model(vector_copy, signature_path=resign(st, priv, tmp_path / "s.sig", **kw), public_key_path=pub)

    return statement, check


def _root(resources: list[dict]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()


def test_resigned_vector_statement_is_valid(signed_by_us) -> None:
    statement, check = signed_by_us
    assert check(statement).valid  # the cases below differ from this one by one defect


def test_wrong_payload_type_is_invalid(signed_by_us) -> None:
    statement, check = signed_by_us
    report = check(statement, payload_type="application/json")
    assert not report.valid and any("payload type is 'application/json'" in p for p in report.problems)


def test_two_subjects_is_invalid(signed_by_us) -> None:
    statement, check = signed_by_us
    statement["subject"].append(copy.deepcopy(statement["subject"][0]))
    report = check(statement)
    assert not report.valid and report.problems == ["statement has 2 subjects, expected exactly one"]


def _with_resources(statement: dict, resources: list[dict]) -> dict:
    statement["predicate"]["resources"] = resources
    statement["subject"][0]["digest"]["sha256"] = _root(resources)
    return statement


def test_duplicate_resource_names_are_invalid(signed_by_us) -> None:
    statement, check = signed_by_us
    resources = statement["predicate"]["resources"]
    report = check(_with_resources(statement, resources + [dict(resources[0])]))
    assert not report.valid and any("duplicate resource name 'README.md'" in p for p in report.problems)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../outside.txt", "escapes the model folder"), ("sub/../../x", "escapes"), ("/etc/passwd", "absolute path"), ("a//b", "normalised"), ("./a", "normalised")],
)
def test_unsafe_resource_names_are_invalid(signed_by_us, name: str, expected: str) -> None:
    statement, check = signed_by_us
    resources = statement["predicate"]["resources"] + [{"name": name, "digest": "00" * 32, "algorithm": "sha256"}]
    report = check(_with_resources(statement, resources))
    assert not report.valid and any(expected in p for p in report.problems), report.problems


def test_root_digest_disagreeing_with_resources_is_invalid(signed_by_us) -> None:
    statement, check = signed_by_us
    statement["subject"][0]["digest"]["sha256"] = "ab" * 32
    report = check(statement)
    assert not report.valid and any("root digest in the statement" in p for p in report.problems)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.update(predicateType="https://model_signing/Digests/v0.1"), "predicateType"),
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (lambda s: s["predicate"]["serialization"].update(method="tensors"), "method 'tensors'"),
        (lambda s: s["predicate"]["serialization"].update(hash_type="md5"), "hash_type 'md5'"),
        (lambda s: s["predicate"]["serialization"].update(method="shards", shard_size=0.5), "shard_size"),
        (lambda s: s["predicate"]["resources"][0].update(algorithm="blake2b"), "uses algorithm 'blake2b'"),
        (lambda s: s["predicate"]["resources"][0].update(digest="XYZ"), "not lower-case hex"),
        (lambda s: s["predicate"]["serialization"].update(ignore_paths=["../etc"]), "ignore path '../etc'"),
        (lambda s: s["predicate"].pop("resources"), "resources is missing"),
    ],
)
def test_other_statement_defects_are_named(signed_by_us, edit, expected: str) -> None:
    statement, check = signed_by_us
    edit(statement)
    report = check(statement)
    assert not report.valid and any(expected in p for p in report.problems), report.problems


def test_non_json_payload_is_invalid(signed_by_us) -> None:
    _, check = signed_by_us
    report = check(b"\x00not json")
    assert not report.valid and any("DSSE payload is not valid JSON" in p for p in report.problems)


# --- keys ----------------------------------------------------------------------------------


def _write_public(tmp_path: Path, key) -> Path:
    path = tmp_path / "other.pub.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (lambda: ec.generate_private_key(ec.SECP224R1()), "secp224r1"),
    ],
)
def test_public_key_of_the_wrong_type_or_curve_is_an_input_error(tmp_path: Path, make, expected: str) -> None:
    path = _write_public(tmp_path, make())
    with pytest.raises(IntegrityInputError, match=expected):
        verify_model(VECTOR_MODEL, signature_path=VECTOR_SIG, public_key_path=path)


def test_private_key_of_the_wrong_curve_is_an_input_error(tmp_path: Path, small_model: Path) -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    path = tmp_path / "k1.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(IntegrityInputError, match="secp256k1"):
        sign_model(small_model, path, signature_path=tmp_path / "m.sig")
    assert not (tmp_path / "m.sig").exists()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"public_key_path": "/nonexistent/key.pem"}, "cannot read public key"),
        ({"public_key_path": VECTOR_SIG}, "not a PEM public key"),
        ({"cert_root_path": "/nonexistent/ca.pem"}, "cannot read root certificate"),
        ({"cert_root_path": VECTOR_PUB}, "holds no PEM certificate"),
        ({}, "exactly one of"),
        ({"public_key_path": VECTOR_PUB, "cert_root_path": VECTOR_PUB}, "exactly one of"),
    ],
)
def test_unusable_trust_input_is_an_input_error(kwargs, expected: str) -> None:
    with pytest.raises(IntegrityInputError, match=expected):
        verify_model(VECTOR_MODEL, signature_path=VECTOR_SIG, **kwargs)


def test_missing_signature_or_model_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(IntegrityInputError, match="cannot read signature"):
        verify_model(VECTOR_MODEL, signature_path=tmp_path / "none.sig", public_key_path=VECTOR_PUB)
    with pytest.raises(IntegrityInputError, match="does not exist"):
        verify_model(tmp_path / "nomodel", signature_path=VECTOR_SIG, public_key_path=VECTOR_PUB)


def test_encrypted_or_public_key_for_signing_is_an_input_error(tmp_path: Path, small_model: Path, ec_keys) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    enc = tmp_path / "enc.pem"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(IntegrityInputError, match="encrypted"):
        sign_model(small_model, enc)
    with pytest.raises(IntegrityInputError, match="it is a public key"):
        sign_model(small_model, ec_keys["p256"][1])


# --- files in the model ----------------------------------------------------------------------


def test_symlink_is_refused_unless_allowed(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    (tmp_path / "target.bin").write_bytes(b"outside")
    (small_model / "link.bin").symlink_to(tmp_path / "target.bin")
    with pytest.raises(IntegrityInputError, match="link.bin is a symlink"):
        sign_model(small_model, priv, signature_path=tmp_path / "m.sig")
    sign_model(small_model, priv, signature_path=tmp_path / "m.sig", allow_symlinks=True)
    assert verify_model(small_model, signature_path=tmp_path / "m.sig", public_key_path=pub, allow_symlinks=True).valid
    report = verify_model(small_model, signature_path=tmp_path / "m.sig", public_key_path=pub)
    assert not report.valid and any("link.bin is a symlink" in p for p in report.problems)
    (tmp_path / "target.bin").write_bytes(b"changed")  # the link's content is what is signed
    report = verify_model(small_model, signature_path=tmp_path / "m.sig", public_key_path=pub, allow_symlinks=True)
    assert [(d.path, d.kind) for d in report.differences] == [("link.bin", "changed")]


def test_dangling_symlink_is_an_unreadable_file(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    sign_model(small_model, priv, signature_path=tmp_path / "m.sig")
    (small_model / "gone.bin").symlink_to(tmp_path / "does-not-exist")
    report = verify_model(small_model, signature_path=tmp_path / "m.sig", public_key_path=pub, allow_symlinks=True)
    assert not report.valid and any("cannot read gone.bin" in p for p in report.problems)


def test_special_file_is_refused(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    sign_model(small_model, priv, signature_path=tmp_path / "m.sig")
    os.mkfifo(small_model / "sub" / "pipe")
    report = verify_model(small_model, signature_path=tmp_path / "m.sig", public_key_path=pub)
    assert not report.valid and any("sub/pipe is not a regular file" in p for p in report.problems)
    with pytest.raises(IntegrityInputError, match="sub/pipe"):
        sign_model(small_model, priv, signature_path=tmp_path / "m2.sig")


def test_unreadable_folder_is_a_problem(small_model: Path, ec_keys, tmp_path: Path) -> None:
    """As root a folder stays listable, so use a file where a folder was signed."""
    priv, pub = ec_keys["p256"]
    sign_model(small_model, priv, signature_path=tmp_path / "m.sig", shard_size=100_000)
    (small_model / "sub" / "deep" / "vocab.txt").unlink()
    (small_model / "sub" / "deep" / "vocab.txt").mkdir()  # a folder where a file was signed
    report = verify_model(small_model, signature_path=tmp_path / "m.sig", public_key_path=pub, ignore_unsigned=True)
    assert not report.valid and any("vocab.txt" in p for p in report.problems)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"hash_algorithm": "md5"}, "unsupported hash algorithm"),
        ({"hash_algorithm": "blake3", "shard_size": 1000}, "blake3"),
        ({"shard_size": 0}, "positive"),
        ({"ignore_paths": ["../x"]}, "not a path inside"),
        ({"ignore_paths": ["/etc"]}, "outside the model"),
    ],
)
def test_bad_sign_options_are_input_errors(small_model: Path, ec_keys, kwargs, expected: str) -> None:
    with pytest.raises(IntegrityInputError, match=expected):
        sign_model(small_model, ec_keys["p256"][0], **kwargs)


def test_ignore_paths_are_recorded_and_honoured(small_model: Path, ec_keys, tmp_path: Path) -> None:
    priv, pub = ec_keys["p256"]
    sig = tmp_path / "m.sig"
    sign_model(small_model, priv, signature_path=sig, ignore_paths=["sub/deep"])
    assert "sub/deep" in statement_of(sig)["predicate"]["serialization"]["ignore_paths"]
    (small_model / "sub" / "deep" / "vocab.txt").write_text("changed")
    assert verify_model(small_model, signature_path=sig, public_key_path=pub).valid


def test_other_key_pair_files_written_by_helper(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path, "x", ec.SECP384R1())
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
