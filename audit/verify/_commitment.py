"""Commitment checks: the forget-set openings rebuild the committed Merkle root, and an
append-only batch extends the previous tree (RFC 9162 consistency).

Threat assumption: the owner may hand over openings for a different, reordered, shortened or
relabelled forget set. The root binds order and content, so the verifier rebuilds the whole tree
from the openings and compares roots; it never trusts a per-row claim of membership."""

from __future__ import annotations

import numpy as np

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome
from prune.formats import FormatError, MerkleTree, parse_hex, verify_consistency

__all__ = ["CommitmentConsistency", "CommitmentOpenings"]


class CommitmentOpenings(Check[VerifyContext]):
    name = "commitment.openings"
    summary = (
        "forget.npz opens every committed leaf, in order, and the rebuilt RFC 9162 root is the "
        "certificate's forget-set root"
    )
    requires = frozenset({"forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        forget_set = ctx.predicate.forget_set
        openings = ctx.openings()
        size = forget_set.size
        evidence = {"committed_leaves": size, "opened": len(openings)}
        index = openings.leaf_index
        if len(openings) != size or not np.array_equal(index, np.arange(size)):
            missing = size - int(np.isin(np.arange(size), index).sum())
            outside = int((index >= size).sum())
            return self.failed(
                f"forget.npz opens {len(openings)} rows for {size} committed leaves "
                f"({missing} missing, {outside} outside the tree)",
                **evidence,
            )
        try:
            tree = MerkleTree(openings.leaf_hashes())
        except FormatError as exc:
            return self.failed(f"forget.npz cannot be hashed: {exc}", **evidence)
        root = tree.root.hex()
        if root != forget_set.root:
            return self.failed(
                f"rebuilt forget-set root {root[:16]}… differs from the committed "
                f"{forget_set.root[:16]}… (leaves changed, reordered or relabelled)",
                rebuilt_root=root,
                **evidence,
            )
        return self.passed(f"{size} leaves open root {root[:16]}…", rebuilt_root=root, **evidence)


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
