"""The copy of the interop vectors in tests/vectors is the published one, byte for byte.

`tests/vectors/oms.sha256` holds the digests of the shared vectors (`sha256sum` format) as
they were copied; the copy must match it on every machine, and where the shared folder is
beside the checkout, so must the shared vectors: a copy edited here, or vectors republished
there, both fail.
"""

from __future__ import annotations

import hashlib

from tests.support import ROOT, SHARED_VECTORS

COPY = ROOT / "tests" / "vectors" / "oms"
DIGESTS = ROOT / "tests" / "vectors" / "oms.sha256"


def _files(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _recorded():
    pairs = (line.split("  ", 1) for line in DIGESTS.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def test_the_copy_is_the_shared_vectors_byte_for_byte():
    recorded = _recorded()
    assert "sigs/p256-files-sha256.sig" in recorded and "model/weights.bin" in recorded
    assert _files(COPY) == recorded
    if SHARED_VECTORS.is_dir():  # beside a working checkout; a clean clone has the copy and its digests
        assert _files(SHARED_VECTORS) == recorded
