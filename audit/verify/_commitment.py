"""Commitment checks: the forget-set openings rebuild the committed Merkle root, and an
append-only batch extends the previous tree (RFC 9162 consistency).

Threat assumption: the owner may hand over openings for a different, reordered, shortened or
relabelled forget set. The root binds order and content, so the verifier rebuilds the root from
the openings and compares; it never trusts a per-row claim of membership.

An append-only batch opens only its own leaves ``[m, n)``; the earlier leaves are represented by
the hashes of the complete old subtrees that the RFC 9162 consistency proof ``PROOF(m, D[n])``
carries. :func:`batch_root` walks the same recursion as the proof's construction (§2.1.4.1),
takes each *old* subtree hash from the proof and computes every subtree touching the new leaves
itself, so the new leaves are bound to the root exactly as if the whole tree were rebuilt."""

from __future__ import annotations

import numpy as np

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from prune.formats import FormatError, MerkleTree, node_hash, parse_hex, verify_consistency

__all__ = ["CommitmentConsistency", "CommitmentOpenings", "batch_root"]


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def batch_root(
    old_size: int, old_root: bytes, proof: list[bytes], new_leaves: list[bytes]
) -> bytes:
    """MTH of the tree of ``old_size + len(new_leaves)`` leaves, using the consistency proof's
    old-subtree hashes for the first ``old_size`` leaves and ``new_leaves`` for the rest. Raises
    :class:`CheckUnavailable` when the proof has the wrong length for these sizes."""
    size = old_size + len(new_leaves)
    if old_size < 1 or not new_leaves:
        raise CheckUnavailable("batch root: need an earlier tree and at least one new leaf")
    entries = iter(proof)
    used = 0

    def take() -> bytes:
        nonlocal used
        used += 1
        try:
            return next(entries)
        except StopIteration:
            raise CheckUnavailable("consistency proof is too short for the batch sizes") from None

    def new_subtree(start: int, end: int) -> bytes:
        return MerkleTree(new_leaves[start - old_size : end - old_size]).root

    def walk(m: int, start: int, end: int, whole: bool) -> bytes:
        if m == end - start:
            return old_root if whole else take()
        k = _split(end - start)
        if m <= k:
            left = walk(m, start, start + k, whole)
            take()  # the proof's copy of the new right subtree; recomputed from the leaves
            return node_hash(left, new_subtree(start + k, end))
        right = walk(m - k, start + k, end, False)
        return node_hash(take(), right)

    root = walk(old_size, 0, size, True)
    if used != len(proof):
        raise CheckUnavailable("consistency proof is too long for the batch sizes")
    return root


class CommitmentOpenings(Check[VerifyContext]):
    name = "commitment.openings"
    summary = (
        "forget.npz opens every committed leaf, in order, and the rebuilt RFC 9162 root is the "
        "certificate's forget-set root"
    )
    requires = frozenset({"forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate = ctx.predicate
        forget_set = predicate.forget_set
        openings = ctx.openings()
        first, size = predicate.first_leaf, forget_set.size
        evidence = {"batch_leaves": size - first, "tree_size": size, "opened": len(openings)}
        index = openings.leaf_index
        expected = np.arange(first, size)
        if len(openings) != size - first or not np.array_equal(index, expected):
            missing = len(expected) - int(np.isin(expected, index).sum())
            outside = int(((index < first) | (index >= size)).sum())
            return self.failed(
                f"forget.npz opens {len(openings)} rows for the {size - first} leaves "
                f"[{first}, {size}) of this batch ({missing} missing, {outside} outside)",
                **evidence,
            )
        try:
            leaves = openings.leaf_hashes()
            if predicate.previous_root is None:
                rebuilt = MerkleTree(leaves).root
            else:
                previous = predicate.previous_root
                rebuilt = batch_root(
                    previous.size,
                    parse_hex(previous.root, field="previous_root.root", length=32),
                    [
                        parse_hex(h, field="consistency_proof", length=32)
                        for h in previous.consistency_proof
                    ],
                    leaves,
                )
        except FormatError as exc:
            return self.failed(f"forget.npz cannot be hashed: {exc}", **evidence)
        root = rebuilt.hex()
        if root != forget_set.root:
            return self.failed(
                f"rebuilt forget-set root {root[:16]}… differs from the committed "
                f"{forget_set.root[:16]}… (leaves changed, reordered or relabelled)",
                rebuilt_root=root,
                **evidence,
            )
        return self.passed(
            f"{size - first} leaves open root {root[:16]}…", rebuilt_root=root, **evidence
        )


class CommitmentConsistency(Check[VerifyContext]):
    name = "commitment.consistency"
    summary = "an append-only batch proves (RFC 9162 consistency) that it extends previous_root"

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate = ctx.predicate
        previous = predicate.previous_root
        if previous is None:
            return self.not_applicable("first batch: no previous root to extend")
        try:
            verify_consistency(
                previous.size,
                predicate.forget_set.size,
                parse_hex(previous.root, field="previous_root.root", length=32),
                parse_hex(predicate.forget_set.root, field="forget_set.root", length=32),
                [
                    parse_hex(h, field="consistency_proof", length=32)
                    for h in previous.consistency_proof
                ],
            )
        except FormatError as exc:
            return self.failed(
                f"not an append-only extension of the previous root: {exc}",
                previous_size=previous.size,
            )
        return self.passed(
            f"extends the previous tree of {previous.size} leaves",
            previous_size=previous.size,
            previous_root=previous.root,
        )
