"""RFC 9162 Merkle tree: known vectors, a slow recursive reference, and property tests that every
proof verifies and every one-bit change fails."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prune.formats import (
    MalformedError,
    MerkleTree,
    ProofCheckError,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# Certificate Transparency's reference vectors (RFC 6962 / 9162 leaves and tree heads).
CT_DATA = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
CT_CONSISTENCY_6_TO_8 = [
    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
]
CT_CONSISTENCY_2_TO_5 = [
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
]


def ct_leaves() -> list[bytes]:
    return [hashlib.sha256(b"\x00" + d).digest() for d in CT_DATA]


def leaves_of(n: int, seed: int = 0) -> list[bytes]:
    return [hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(n)]


# Slow, obviously-correct reference: the recursive definitions of RFC 9162 §2.1.
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_certificate_transparency_vectors() -> None:
    leaves = ct_leaves()
    for n in range(1, 9):
        assert MerkleTree(leaves[:n]).root.hex() == CT_ROOTS[n - 1]
    tree = MerkleTree(leaves)
    assert [h.hex() for h in tree.inclusion_proof(0)] == CT_INCLUSION_0_OF_8
    assert [h.hex() for h in tree.consistency_proof(6)] == CT_CONSISTENCY_6_TO_8
    assert [h.hex() for h in MerkleTree(leaves[:5]).consistency_proof(2)] == CT_CONSISTENCY_2_TO_5
    verify_consistency(
        6,
        8,
        bytes.fromhex(CT_ROOTS[5]),
        bytes.fromhex(CT_ROOTS[7]),
        [bytes.fromhex(h) for h in CT_CONSISTENCY_6_TO_8],
    )


@pytest.mark.parametrize("n", range(1, 34))
def test_tree_matches_recursive_reference(n: int) -> None:
    leaves = leaves_of(n)
    tree = MerkleTree(leaves)
    assert tree.root == ref_mth(leaves)
    for i in range(n):
        proof = tree.inclusion_proof(i)
        assert list(proof) == ref_path(i, leaves)
        verify_inclusion(leaves[i], i, n, proof, tree.root)
    for m in range(1, n + 1):
        assert tree.root_at(m) == ref_mth(leaves[:m])
        assert list(tree.consistency_proof(m)) == ref_subproof(m, leaves, True)
        verify_consistency(m, n, tree.root_at(m), tree.root, tree.consistency_proof(m))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_inclusion_one_bit_changes_fail(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n, seed=n)
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.inclusion_proof(i)
    verify_inclusion(leaves[i], i, n, proof, tree.root)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofCheckError):
        verify_inclusion(flip(leaves[i], bit), i, n, proof, tree.root)
    with pytest.raises(ProofCheckError):
        verify_inclusion(leaves[i], i, n, proof, flip(tree.root, bit))
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = (*proof[:j], flip(proof[j], bit), *proof[j + 1 :])
        with pytest.raises(ProofCheckError):
            verify_inclusion(leaves[i], i, n, bad, tree.root)
        with pytest.raises(ProofCheckError):
            verify_inclusion(leaves[i], i, n, proof[:-1], tree.root)
    with pytest.raises(ProofCheckError):
        verify_inclusion(leaves[i], i, n, (*proof, tree.root), tree.root)
    other = data.draw(st.integers(0, n))
    if other != i and n > 1:
        with pytest.raises(ProofCheckError):
            verify_inclusion(leaves[i], other, n, proof, tree.root)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 300), data=st.data())
def test_consistency_one_bit_changes_fail(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n, seed=-n)
    tree = MerkleTree(leaves)
    m = data.draw(st.integers(1, n - 1))
    old = tree.root_at(m)
    proof = tree.consistency_proof(m)
    verify_consistency(m, n, old, tree.root, proof)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofCheckError):
        verify_consistency(m, n, flip(old, bit), tree.root, proof)
    with pytest.raises(ProofCheckError):
        verify_consistency(m, n, old, flip(tree.root, bit), proof)
    j = data.draw(st.integers(0, len(proof) - 1))
    with pytest.raises(ProofCheckError):
        verify_consistency(m, n, old, tree.root, (*proof[:j], flip(proof[j], bit), *proof[j + 1 :]))
    with pytest.raises(ProofCheckError):
        verify_consistency(m, n, old, tree.root, proof[:-1])
    # a tree that rewrote an old leaf is not an extension of the old one
    k = data.draw(st.integers(0, m - 1))
    forged = MerkleTree([*leaves[:k], flip(leaves[k], bit), *leaves[k + 1 :]])
    with pytest.raises(ProofCheckError):
        verify_consistency(m, n, old, forged.root, forged.consistency_proof(m))


def test_equal_sizes_need_equal_roots_and_empty_proof() -> None:
    tree = MerkleTree(leaves_of(5))
    verify_consistency(5, 5, tree.root, tree.root, ())
    with pytest.raises(ProofCheckError):
        verify_consistency(5, 5, tree.root, flip(tree.root, 3), ())
    with pytest.raises(ProofCheckError):
        verify_consistency(5, 5, tree.root, tree.root, (tree.root,))
    with pytest.raises(ProofCheckError):
        verify_consistency(5, 4, tree.root, tree.root, ())


def test_empty_and_malformed_inputs_are_rejected() -> None:
    with pytest.raises(MalformedError, match="empty forget set"):
        MerkleTree([])
    with pytest.raises(MalformedError, match="32 bytes"):
        MerkleTree([b"short"])
    tree = MerkleTree(leaves_of(3))
    with pytest.raises(MalformedError):
        tree.inclusion_proof(3)
    with pytest.raises(MalformedError):
        tree.consistency_proof(0)
    with pytest.raises(MalformedError):
        verify_inclusion(b"x", 0, 3, tree.inclusion_proof(0), tree.root)
    with pytest.raises(ProofCheckError):
        verify_inclusion(tree.leaves[0], 0, 0, (), tree.root)
