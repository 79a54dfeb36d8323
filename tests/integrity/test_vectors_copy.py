"""The copy of the interop vectors in tests/vectors is the shared one, byte for byte."""

from __future__ import annotations

import hashlib

from tests.support import ROOT, SHARED_VECTORS

COPY = ROOT / "tests" / "vectors" / "oms"


def _files(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_copy_matches_the_shared_vectors():
    copy = _files(COPY)
    assert "sigs/p256-files-sha256.sig" in copy and "model/weights.bin" in copy
    if SHARED_VECTORS.is_dir():  # beside a working checkout; a clean clone has only the copy
        assert _files(SHARED_VECTORS) == copy
