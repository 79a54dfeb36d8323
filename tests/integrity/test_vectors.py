"""The interop vectors made by model_signing 1.1.1 verify, and every tampering is caught."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from gateway.integrity import sign_model, verify_model

from .conftest import VECTOR_MODEL, VECTOR_PUB, VECTOR_ROOT_DIGEST, VECTOR_SIG, VECTORS, load_bundle, signed_files

FILES = signed_files(VECTOR_MODEL)
NON_EMPTY = [f for f in FILES if (VECTOR_MODEL / f).stat().st_size]


def verify(model: Path, sig: Path = VECTOR_SIG, pub: Path = VECTOR_PUB, **kw):
    return verify_model(model, signature_path=sig, public_key_path=pub, **kw)


def test_vector_files_are_what_the_readme_says() -> None:
    assert len(FILES) == 7 and "sub/empty.bin" in FILES and "sub/nested/file with space.txt" in FILES


def test_vector_model_verifies_with_the_readme_root_digest() -> None:
    report = verify(VECTOR_MODEL)
    assert report.valid, report.problems
    assert report.root_digest == VECTOR_ROOT_DIGEST
    assert (report.serialization, report.hash_algorithm, report.resources) == ("files", "sha256", 7)
    assert report.differences == [] and report.problems == []


def test_embedded_vector_verifies() -> None:
    model = VECTORS / "model-embedded"
    report = verify(model, model / "model.sig")
    assert report.valid, report.problems


def test_signing_the_vector_model_here_gives_the_reference_root_digest(vector_copy: Path, ec_keys, tmp_path: Path) -> None:
    result = sign_model(vector_copy, ec_keys["p256"][0], signature_path=tmp_path / "ours.sig")
    assert result.root_digest == VECTOR_ROOT_DIGEST
    assert result.files == 7


def test_copy_of_vector_is_valid_before_mutation(vector_copy: Path) -> None:
    assert verify(vector_copy).valid  # the mutations below start from a valid model


@pytest.mark.parametrize("name", NON_EMPTY)
def test_flipped_bit_is_invalid(vector_copy: Path, name: str) -> None:
    path = vector_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify(vector_copy)
    assert not report.valid
    assert [(d.path, d.kind) for d in report.differences] == [(name, "changed")]


def test_empty_file_gaining_a_byte_is_invalid(vector_copy: Path) -> None:
    (vector_copy / "sub" / "empty.bin").write_bytes(b"\0")
    report = verify(vector_copy)
    assert not report.valid and [(d.path, d.kind) for d in report.differences] == [("sub/empty.bin", "changed")]


@pytest.mark.parametrize("name", ["extra.bin", "sub/nested/new.txt", "tokenizer/.hidden", "sub/.gitignore"])
def test_added_file_is_invalid(vector_copy: Path, name: str) -> None:
    (vector_copy / name).write_text("x")
    report = verify(vector_copy)
    assert not report.valid and [(d.path, d.kind) for d in report.differences] == [(name, "extra")]


def test_added_empty_folder_is_not_a_difference(vector_copy: Path) -> None:
    (vector_copy / "newdir").mkdir()
    assert verify(vector_copy).valid  # folders are not resources, only files


@pytest.mark.parametrize("name", FILES)
def test_removed_file_is_invalid(vector_copy: Path, name: str) -> None:
    (vector_copy / name).unlink()
    report = verify(vector_copy)
    assert not report.valid and [(d.path, d.kind) for d in report.differences] == [(name, "missing")]


def test_removed_folder_lists_every_file(vector_copy: Path) -> None:
    shutil.rmtree(vector_copy / "sub")
    report = verify(vector_copy)
    assert [(d.path, d.kind) for d in report.differences] == [("sub/empty.bin", "missing"), ("sub/nested/file with space.txt", "missing")]


def test_top_level_git_paths_are_ignored(vector_copy: Path) -> None:
    (vector_copy / ".gitattributes").write_text("changed\n")
    (vector_copy / ".git").mkdir()
    (vector_copy / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (vector_copy / ".gitignore").write_text("*.tmp\n")
    assert verify(vector_copy).valid


def test_renamed_model_folder_still_verifies(vector_copy: Path) -> None:
    renamed = vector_copy.rename(vector_copy.parent / "other-name")
    assert verify(renamed).valid  # the subject name is informative only


def test_wrong_public_key_is_invalid(vector_copy: Path, ec_keys) -> None:
    report = verify(vector_copy, pub=ec_keys["p256"][1])
    assert not report.valid
    assert any("not by the given public key" in p for p in report.problems)
    assert report.signer is None


def test_wrong_key_without_hint_fails_on_the_signature(vector_copy: Path, ec_keys, tmp_path: Path) -> None:
    bundle = load_bundle(VECTOR_SIG)
    bundle["verificationMaterial"]["publicKey"] = {}
    sig = tmp_path / "nohint.sig"
    sig.write_text(json.dumps(bundle))
    assert verify(vector_copy, sig).valid  # no hint: the old form, still verifiable
    report = verify(vector_copy, sig, ec_keys["p256"][1])
    assert not report.valid and any("signature does not verify" in p for p in report.problems)


@pytest.mark.parametrize("position", [0, 10, -3])
def test_corrupted_signature_is_invalid(vector_copy: Path, tmp_path: Path, position: int) -> None:
    bundle = load_bundle(VECTOR_SIG)
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[position] ^= 0x40
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    path = tmp_path / "corrupt.sig"
    path.write_text(json.dumps(bundle))
    report = verify(vector_copy, path)
    assert not report.valid and any("signature does not verify" in p for p in report.problems)


def test_edited_payload_without_resigning_is_invalid(vector_copy: Path, tmp_path: Path) -> None:
    """An attacker swaps weights.bin and rewrites its digest (and the root) in the statement."""
    import hashlib

    (vector_copy / "weights.bin").write_bytes(b"evil weights")
    bundle = load_bundle(VECTOR_SIG)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    resources = statement["predicate"]["resources"]
    for res in resources:
        if res["name"] == "weights.bin":
            res["digest"] = hashlib.sha256(b"evil weights").hexdigest()
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    statement["subject"][0]["digest"]["sha256"] = root
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement, indent=2).encode()).decode()
    path = tmp_path / "edited.sig"
    path.write_text(json.dumps(bundle))
    report = verify(vector_copy, path)
    assert not report.valid and any("signature does not verify" in p for p in report.problems)


def test_reencoded_identical_payload_is_invalid(tmp_path: Path) -> None:
    """The signature covers the payload bytes, not its JSON meaning."""
    bundle = load_bundle(VECTOR_SIG)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path = tmp_path / "reencoded.sig"
    path.write_text(json.dumps(bundle))
    assert not verify(VECTOR_MODEL, path).valid


def test_ignore_unsigned_skips_extra_files_only(vector_copy: Path) -> None:
    (vector_copy / "notes.txt").write_text("local notes")
    assert verify(vector_copy, ignore_unsigned=True).valid
    (vector_copy / "config.json").unlink()
    report = verify(vector_copy, ignore_unsigned=True)
    assert not report.valid and [(d.path, d.kind) for d in report.differences] == [("config.json", "missing")]


def test_caller_ignore_path_hides_a_signed_file_as_missing(vector_copy: Path) -> None:
    report = verify(vector_copy, ignore_paths=["README.md"])
    assert not report.valid and [(d.path, d.kind) for d in report.differences] == [("README.md", "missing")]


def test_all_three_kinds_reported_together(vector_copy: Path) -> None:
    (vector_copy / "config.json").write_text("{}")
    (vector_copy / "README.md").unlink()
    (vector_copy / "added.txt").write_text("new")
    report = verify(vector_copy)
    assert {(d.path, d.kind) for d in report.differences} == {("config.json", "changed"), ("README.md", "missing"), ("added.txt", "extra")}
    assert json.loads(report.to_json())["valid"] is False
