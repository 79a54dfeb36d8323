"""RFC 9162 (Certificate Transparency 2.0) section 2.1 Merkle tree functions.

Everything here is pure: hashes in, hashes out. The proof *generators* take a
`subtree(start, n)` callable returning MTH(D[start:start+n]) so the same code
serves the stored tree (which answers from per-level hash files) and a plain
list of leaves. The *verifiers* are the bit-walking algorithms of RFC 9162
2.1.3.2 and 2.1.4.2, so a proof checks without the tree.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeFn = Callable[[int, int], bytes]


def leaf_hash(leaf: bytes) -> bytes:
    """HASH(0x00 || leaf): the domain byte stops a leaf posing as an interior node."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2): RFC 9162's k."""
    if n < 2:
        raise ValueError("split_point needs n >= 2")
    return 1 << ((n - 1).bit_length() - 1)


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH over raw leaves; O(n), for small inputs and cross-checks only."""
    return mth_of_hashes([leaf_hash(leaf) for leaf in leaves])


def mth_of_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH given the leaf hashes, by the recursive definition."""
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = split_point(len(hashes))
    return node_hash(mth_of_hashes(hashes[:k]), mth_of_hashes(hashes[k:]))


def inclusion_path(m: int, n: int, subtree: SubtreeFn, start: int = 0) -> list[bytes]:
    """PATH(m, D[start:start+n]) of RFC 9162 2.1.3.1.

    Only one sibling on the path can be a ragged right-edge subtree, so with a
    `subtree` that reads stored perfect subtrees this costs O(log n) reads.
    """
    if not 0 <= m < n:
        raise ValueError(f"leaf {m} is not in a tree of size {n}")
    path: list[bytes] = []
    while n > 1:
        k = split_point(n)
        if m < k:
            path.append(subtree(start + k, n - k))
            n = k
        else:
            path.append(subtree(start, k))
            start, m, n = start + k, m - k, n - k
    path.reverse()  # the recursion emits the deepest sibling first
    return path


def consistency_path(m: int, n: int, subtree: SubtreeFn) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) of RFC 9162 2.1.4.1."""
    if not 0 <= m <= n:
        raise ValueError(f"no consistency proof from {m} to {n}")
    if m == 0 or m == n:
        return []
    proof: list[bytes] = []
    start, complete = 0, True
    while m != n:
        k = split_point(n)
        if m <= k:
            proof.append(subtree(start + k, n - k))
            n = k
        else:
            proof.append(subtree(start, k))
            start, m, n, complete = start + k, m - k, n - k, False
    if not complete:
        proof.append(subtree(start, n))
    proof.reverse()
    return proof


def _is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes | None:
    """RFC 9162 2.1.3.2 steps 1-5: the root the proof leads to, or None if malformed."""
    if index >= size or any(len(p) != HASH_SIZE for p in proof):
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff `proof` shows the leaf hash `leaf` at `index` in the tree of `size` with `root`."""
    return len(leaf) == HASH_SIZE and root_from_inclusion(index, size, leaf, proof) == root


def verify_consistency(m: int, n: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: the tree of size n (root2) extends the tree of size m (root1)."""
    if m > n or any(len(p) != HASH_SIZE for p in proof):
        return False
    if m == n:
        return not proof and root1 == root2
    if m == 0:
        return not proof  # every tree extends the empty one
    if not proof:
        return False
    path = list(proof)
    if _is_power_of_two(m):
        path.insert(0, root1)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root1 and sr == root2


def decompose(start: int, end: int) -> Iterator[tuple[int, int]]:
    """The maximal aligned perfect subtrees covering [start, end), left to right, as (level, index)."""
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        yield level, start >> level
        start += 1 << level


class Frontier:
    """The right edge of a growing tree: one perfect subtree hash per set bit of the size.

    Appending is amortised O(1) and the root of the current size is a fold of at
    most log2(n) hashes, which is what keeps the append path cheap.
    """

    __slots__ = ("size", "nodes")

    def __init__(self, size: int = 0, nodes: list[tuple[int, bytes]] | None = None) -> None:
        self.size = size
        self.nodes: list[tuple[int, bytes]] = list(nodes or [])

    def append(self, level: int, digest: bytes, emit: Callable[[int, int, bytes], None] | None = None) -> None:
        """Add a perfect subtree of 2**level leaves aligned at `size`; `emit` sees each new parent."""
        if self.size & ((1 << level) - 1):
            raise ValueError("subtree is not aligned with the frontier")
        nodes = self.nodes
        nodes.append((level, digest))
        self.size += 1 << level
        while len(nodes) > 1 and nodes[-1][0] == nodes[-2][0]:
            lvl, right = nodes.pop()
            _, left = nodes.pop()
            parent = node_hash(left, right)
            nodes.append((lvl + 1, parent))
            if emit is not None:
                emit(lvl + 1, (self.size >> (lvl + 1)) - 1, parent)

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1][1]
        for _, digest in reversed(self.nodes[:-1]):
            acc = node_hash(digest, acc)
        return acc

    def copy(self) -> "Frontier":
        return Frontier(self.size, self.nodes)
