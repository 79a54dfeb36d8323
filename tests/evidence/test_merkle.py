"""RFC 9162 Merkle functions: published CT vectors, and an independent recursive model."""

from __future__ import annotations

import hashlib

import pytest

from gateway.evidence.merkle import (
    EMPTY_ROOT,
    decompose,
    leaf_hash,
    mth,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from gateway.evidence.tree import MerkleTree, TreeFiles, repair_levels

# Reference data from transparency-dev/merkle, proof/verify_test.go
# (commit 02194e9afb6c1d95b5381350007963aa70fff472), itself carried over from
# google/certificate-transparency's merkle_tree_test.cc. Leaf numbers in that
# file are 1-based; they are converted to 0-based indexes here.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
CT_INCLUSION = [  # (leaf index, tree size, audit path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]
CT_CONSISTENCY = [  # (size1, size2, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


# --- an independent model: RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1 transcribed as plain recursion ----------

def ref_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return ref_hash(b"")
    if n == 1:
        return ref_hash(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return ref_hash(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- fixtures ------------------------------------------------------------------------------------------

def build_tree(tmp_path, leaves: list[bytes], flush_every: int = 3) -> MerkleTree:
    tree = MerkleTree(TreeFiles(tmp_path / "tree"))
    for i, leaf in enumerate(leaves):
        tree.append_leaf(leaf_hash(leaf))
        if i % flush_every == 0:
            tree.flush()  # mix stored and buffered nodes, as the live log does
    return tree


# --- the published vectors ------------------------------------------------------------------------------

def test_empty_tree_root_is_sha256_of_nothing():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert mth([]) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_ct_roots(tmp_path, size):
    assert mth(CT_LEAVES[:size]) == CT_ROOTS[size - 1]
    assert ref_mth(CT_LEAVES[:size]) == CT_ROOTS[size - 1]
    tree = build_tree(tmp_path, CT_LEAVES)
    assert tree.root(size) == CT_ROOTS[size - 1]


def test_ct_incremental_root_at_every_size(tmp_path):
    tree = MerkleTree(TreeFiles(tmp_path / "tree"))
    for size, leaf in enumerate(CT_LEAVES, start=1):
        tree.append_leaf(leaf_hash(leaf))
        assert tree.root() == CT_ROOTS[size - 1]


@pytest.mark.parametrize("index,size,path", CT_INCLUSION)
def test_ct_inclusion_proofs(tmp_path, index, size, path):
    want = [bytes.fromhex(h) for h in path]
    tree = build_tree(tmp_path, CT_LEAVES)
    assert tree.inclusion_proof(index, size) == want
    assert verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, want, CT_ROOTS[size - 1])


@pytest.mark.parametrize("m,n,proof", CT_CONSISTENCY)
def test_ct_consistency_proofs(tmp_path, m, n, proof):
    want = [bytes.fromhex(h) for h in proof]
    tree = build_tree(tmp_path, CT_LEAVES)
    assert tree.consistency_proof(m, n) == want
    assert verify_consistency(m, n, CT_ROOTS[m - 1], CT_ROOTS[n - 1], want)


# --- incremental, stored tree vs the recursive model, sizes 1..70 ---------------------------------------

LEAVES_70 = [b"leaf-%d" % i * (i % 4 + 1) for i in range(70)]


def test_stored_tree_matches_recursive_model_for_every_size_and_proof(tmp_path):
    tree = build_tree(tmp_path, LEAVES_70, flush_every=5)
    grown = MerkleTree(TreeFiles(tmp_path / "grown"))
    checked = 0
    for n in range(1, 71):
        d = LEAVES_70[:n]
        root = ref_mth(d)
        grown.append_leaf(leaf_hash(d[-1]))
        assert grown.root() == root, n
        assert tree.root(n) == root, n
        for m in range(n):
            path = tree.inclusion_proof(m, n)
            assert path == ref_path(m, d), (m, n)
            assert verify_inclusion(leaf_hash(d[m]), m, n, path, root)
            checked += 1
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == ref_proof(m, d), (m, n)
            assert verify_consistency(m, n, ref_mth(LEAVES_70[:m]), root, proof)
            checked += 1
    assert checked == 2 * sum(range(1, 71))


def test_verifiers_reject_wrong_proofs():
    d = LEAVES_70[:37]
    root, other = ref_mth(d), ref_mth(LEAVES_70[:36])
    for m in (0, 5, 31, 32, 36):
        path = ref_path(m, d)
        leaf = leaf_hash(d[m])
        assert verify_inclusion(leaf, m, 37, path, root)
        assert not verify_inclusion(leaf, m, 37, path, other)
        assert not verify_inclusion(leaf, (m + 1) % 37, 37, path, root)
        assert not verify_inclusion(leaf, m, 74, path, root)
        assert not verify_inclusion(leaf, m, 18, path, root)
        assert not verify_inclusion(leaf, m, 37, path[:-1], root)
        assert not verify_inclusion(leaf, m, 37, path + [root], root)
        flipped = [bytes([path[0][0] ^ 8]) + path[0][1:]] + path[1:]
        assert not verify_inclusion(leaf, m, 37, flipped, root)
        assert root_from_inclusion(37, 37, leaf, path) is None
    for m in (1, 4, 13, 32):
        proof, r1 = ref_proof(m, d), ref_mth(LEAVES_70[:m])
        assert verify_consistency(m, 37, r1, root, proof)
        assert not verify_consistency(m, 37, root, r1, proof)
        assert not verify_consistency(m, 37, r1, root, proof[:-1])
        assert not verify_consistency(m, 37, r1, root, [])
        assert not verify_consistency(m, 74, r1, root, proof)
        assert not verify_consistency(m, 18, r1, root, proof)
        assert not verify_consistency(m, 37, r1, root, [bytes([proof[0][0] ^ 16]) + proof[0][1:]] + proof[1:])
    assert verify_consistency(37, 37, root, root, [])
    assert not verify_consistency(37, 37, root, other, [])
    assert not verify_consistency(38, 37, root, root, [])


def test_decompose_covers_ranges_with_aligned_perfect_subtrees():
    for start in range(0, 40):
        for end in range(start, 70):
            covered = start
            for level, index in decompose(start, end):
                assert index << level == covered and covered % (1 << level) == 0
                covered += 1 << level
            assert covered == end


def test_repair_levels_recomputes_upper_levels_from_leaves(tmp_path):
    tree = build_tree(tmp_path, LEAVES_70)
    tree.flush()
    for level in range(1, 7):
        (tmp_path / "tree" / f"L{level:02d}").unlink()
    files = TreeFiles(tmp_path / "tree")
    repair_levels(files, 70)
    again = MerkleTree(files, 70)
    assert again.root() == ref_mth(LEAVES_70)
    assert again.inclusion_proof(3, 70) == ref_path(3, LEAVES_70)


def test_appends_hash_amortised_once_and_proofs_read_logarithmically(tmp_path, monkeypatch):
    import gateway.evidence.merkle as merkle

    calls = {"node": 0, "read": 0}
    real_node_hash = merkle.node_hash

    def counting_node_hash(left, right):
        calls["node"] += 1
        return real_node_hash(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting_node_hash)
    tree = MerkleTree(TreeFiles(tmp_path / "tree"))
    n = 5000
    for i in range(n):
        tree.append_leaf(leaf_hash(b"%d" % i))
    assert calls["node"] == n - bin(n).count("1")  # one interior node per merge: O(1) amortised
    tree.flush()

    files = TreeFiles(tmp_path / "tree")
    real_read = files.read

    def counting_read(level, index):
        calls["read"] += 1
        return real_read(level, index)

    files.read = counting_read
    stored = MerkleTree(files, n)
    bound = 2 * (n - 1).bit_length()
    for m, size in ((0, n), (2047, n), (4999, n), (1234, 4097), (77, 3001)):
        calls["read"] = 0
        stored.inclusion_proof(m, size)
        assert calls["read"] <= bound, (m, size, calls["read"])
    for m, size in ((1, n), (1000, n), (4096, 4999), (3001, 3002)):
        calls["read"] = 0
        stored.consistency_proof(m, size)
        assert calls["read"] <= bound + 2, (m, size, calls["read"])
