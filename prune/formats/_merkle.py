"""RFC 9162 §2.1 Merkle tree: tree hash, inclusion proofs, consistency proofs, and the
verification algorithms of §2.1.3.2 and §2.1.4.2 (written out step by step from the RFC).

Leaves are already-hashed 32-byte values (see :func:`prune.formats.leaf_hash`, which applies the
``0x00`` leaf prefix); interior nodes are ``SHA-256(0x01 || left || right)``. The tree over
``n`` leaves splits at the largest power of two smaller than ``n``. Building level by level and
carrying an unpaired last node up unchanged gives exactly that tree, so every complete aligned
subtree is one stored node and each proof is a handful of list look-ups.

Verification is fail-closed: the verifiers return ``None`` or raise :class:`ProofCheckError`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from prune.formats._sample import NODE_PREFIX
from prune.formats.errors import MalformedError, ProofCheckError

__all__ = [
    "HASH_SIZE",
    "MerkleTree",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An immutable RFC 9162 tree over ``leaves`` (32-byte leaf hashes, at least one).

    Invariants: ``levels[0]`` are the leaves; ``levels[j][i]`` is the hash of the complete
    subtree over leaves ``[i * 2**j, (i + 1) * 2**j)`` whenever that range lies inside the tree;
    ``root == levels[-1][0]``."""

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise MalformedError("Merkle tree: an empty forget set cannot be committed")
        level = [bytes(leaf) for leaf in leaves]
        if any(len(leaf) != HASH_SIZE for leaf in level):
            raise MalformedError(f"Merkle tree: every leaf hash must be {HASH_SIZE} bytes")
        levels = [level]
        sha256 = hashlib.sha256
        while len(level) > 1:
            paired = [
                sha256(NODE_PREFIX + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
            levels.append(level)
        self._levels: tuple[tuple[bytes, ...], ...] = tuple(tuple(lv) for lv in levels)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """RFC 9162 Merkle tree hash MTH(D[n])."""
        return self._levels[-1][0]

    @property
    def leaves(self) -> tuple[bytes, ...]:
        return self._levels[0]

    def inclusion_proof(self, index: int) -> tuple[bytes, ...]:
        """PATH(index, D[n]) of RFC 9162 §2.1.3.1, bottom-up."""
        if not 0 <= index < self.size:
            raise MalformedError(f"Merkle tree: leaf index {index} outside [0, {self.size})")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return tuple(path)

    def inclusion_proofs(self) -> list[tuple[bytes, ...]]:
        """Inclusion proofs of every leaf, in leaf order."""
        return [self.inclusion_proof(i) for i in range(self.size)]

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for ``0 <= start < end <= size``."""
        if not 0 <= start < end <= self.size:
            raise MalformedError(f"Merkle tree: range [{start}, {end}) outside the tree")
        width = end - start
        if width & (width - 1) == 0 and start % width == 0:
            return self._levels[width.bit_length() - 1][start // width]
        k = _largest_power_of_two_below(width)
        return node_hash(self.subtree_hash(start, start + k), self.subtree_hash(start + k, end))

    def root_at(self, size: int) -> bytes:
        """Root of the tree's first ``size`` leaves (an earlier batch's root)."""
        return self.subtree_hash(0, size)

    def consistency_proof(self, old_size: int) -> tuple[bytes, ...]:
        """PROOF(old_size, D[n]) of RFC 9162 §2.1.4.1: the first ``old_size`` leaves are a prefix.
        Empty when ``old_size == size``."""
        if not 1 <= old_size <= self.size:
            raise MalformedError(
                f"Merkle tree: consistency needs 1 <= old size <= {self.size}, got {old_size}"
            )
        proof: list[bytes] = []
        self._subproof(old_size, 0, self.size, True, proof)
        return tuple(proof)

    def _subproof(self, m: int, start: int, end: int, whole: bool, out: list[bytes]) -> None:
        n = end - start
        if m == n:
            if not whole:
                out.append(self.subtree_hash(start, end))
            return
        k = _largest_power_of_two_below(n)
        if m <= k:
            self._subproof(m, start, start + k, whole, out)
            out.append(self.subtree_hash(start + k, end))
        else:
            self._subproof(m - k, start + k, end, False, out)
            out.append(self.subtree_hash(start, start + k))


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise MalformedError(f"{what} must be {HASH_SIZE} bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise :class:`ProofCheckError` unless ``proof`` shows that ``leaf``
    (a leaf hash) is leaf ``index`` of the tree of ``size`` leaves with hash ``root``."""
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root")
    for item in proof:
        _check_hash(item, "inclusion proof entry")
    if not 0 <= index < size:
        raise ProofCheckError(f"inclusion proof: leaf index {index} outside [0, {size})")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofCheckError("inclusion proof does not verify (too long)")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise ProofCheckError("inclusion proof does not verify against the root")


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: raise :class:`ProofCheckError` unless ``proof`` shows that the tree of
    ``size1`` leaves with hash ``root1`` is a prefix of the tree of ``size2`` leaves with hash
    ``root2``. Equal sizes need an empty proof and equal roots."""
    _check_hash(root1, "first root")
    _check_hash(root2, "second root")
    for item in proof:
        _check_hash(item, "consistency proof entry")
    if not 1 <= size1 <= size2:
        raise ProofCheckError(f"consistency proof: sizes {size1} -> {size2} are not a growth")
    if size1 == size2:
        if proof or root1 != root2:
            raise ProofCheckError("consistency proof does not verify (equal sizes)")
        return
    path = list(proof)
    if not path:
        raise ProofCheckError("consistency proof is empty")
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofCheckError("consistency proof does not verify (too long)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if fr != root1 or sr != root2 or sn != 0:
        raise ProofCheckError("consistency proof does not verify against the roots")
