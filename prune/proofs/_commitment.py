"""Forget-set commitments: fresh salts, salted leaves, the RFC 9162 tree, and the owner's
append-only commitment log.

Threat assumptions: salts must be unguessable, so by default they come from the operating
system's CSPRNG (``secrets``); a seeded ``numpy`` Generator may be passed for reproducible tests
and golden files only, since its output is predictable. The commitment log the owner keeps
between batches holds leaf hashes and batch roots, never samples or salts: a leaf hash without its
salt reveals nothing about the sample, so the log is safe to store, but it is the owner's state
and does not go into PROOF/."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from prune.errors import ProofError
from prune.formats import (
    MIN_SALT_BYTES,
    FormatError,
    MerkleTree,
    PreviousBatch,
    canonical_json,
    leaf_hashes,
    parse_canonical_json,
    parse_hex,
)

__all__ = ["LOG_TYPE", "Commitment", "CommitmentLog", "commit_batch", "random_bytes"]

LOG_TYPE = "https://prune-audit.dev/commitment-log/v1"


def random_bytes(count: int, rng: np.random.Generator | None) -> bytes:
    """``count`` bytes from the OS CSPRNG, or from ``rng`` when one is given (tests only)."""
    return secrets.token_bytes(count) if rng is None else rng.bytes(count)


@dataclass(frozen=True, eq=False)
class Commitment:
    """One batch committed into the (possibly longer) tree. Invariant: the batch's leaves are
    ``tree.leaves[first_leaf:]``; ``salts[i]`` opens leaf ``first_leaf + i``; ``previous`` is set
    iff ``first_leaf > 0`` and then carries the consistency proof from the earlier root."""

    tree: MerkleTree
    salts: NDArray[np.uint8]
    first_leaf: int
    previous: PreviousBatch | None

    @property
    def leaf_index(self) -> NDArray[np.int64]:
        return np.arange(self.first_leaf, self.tree.size, dtype=np.int64)

    @property
    def root_hex(self) -> str:
        return self.tree.root.hex()


@dataclass(frozen=True)
class CommitmentLog:
    """The owner's append-only state: every committed leaf hash and, per batch, the tree size,
    root (hex) and certificate digest. Round trip: ``from_json(to_json())`` is equal."""

    leaves: tuple[bytes, ...]
    batches: tuple[tuple[int, str, str], ...]

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "type": LOG_TYPE,
                "version": 1,
                "leaves": [leaf.hex() for leaf in self.leaves],
                "batches": [
                    {"size": size, "root": root, "certificate_sha256": cert}
                    for size, root, cert in self.batches
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> CommitmentLog:
        try:
            doc = parse_canonical_json(data)
            if not isinstance(doc, dict) or doc.get("type") != LOG_TYPE or doc.get("version") != 1:
                raise ProofError("commitment log: unknown type or version")
            leaves = tuple(parse_hex(h, field="leaves", length=32) for h in doc["leaves"])
            batches = tuple(
                (int(b["size"]), str(b["root"]), str(b["certificate_sha256"]))
                for b in doc["batches"]
            )
        except (FormatError, KeyError, TypeError, ValueError) as exc:
            raise ProofError(f"commitment log is malformed: {exc}") from exc
        log = cls(leaves, batches)
        if not batches or batches[-1][0] != len(leaves):
            raise ProofError("commitment log: last batch size does not match its leaves")
        if MerkleTree(leaves).root.hex() != batches[-1][1]:
            raise ProofError("commitment log: leaves do not hash to the last recorded root")
        return log

    @classmethod
    def load(cls, path: Path) -> CommitmentLog | None:
        """The log at ``path``, or None when it does not exist yet (first batch)."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProofError(f"cannot read commitment log {path}: {exc.strerror or exc}") from exc
        return cls.from_json(data)

    @classmethod
    def empty(cls) -> CommitmentLog:
        return cls(leaves=(), batches=())

    def extended(self, commitment: Commitment, certificate_sha256: str) -> CommitmentLog:
        """This log plus the batch ``commitment`` (which must extend it)."""
        if commitment.tree.leaves[: len(self.leaves)] != self.leaves:
            raise ProofError("commitment does not extend the commitment log")
        return CommitmentLog(
            leaves=commitment.tree.leaves,
            batches=(
                *self.batches,
                (commitment.tree.size, commitment.root_hex, certificate_sha256),
            ),
        )

    def save(self, path: Path) -> None:
        """Atomically replace the log at ``path`` (write a sibling, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(self.to_json())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ProofError(f"cannot write commitment log {path}: {exc.strerror or exc}") from exc


def commit_batch(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    previous: CommitmentLog | None = None,
    salt_bytes: int = MIN_SALT_BYTES,
    rng: np.random.Generator | None = None,
) -> Commitment:
    """Salt and commit the samples ``x`` (``[N, ...]`` float32) with labels ``y`` as leaves
    appended after ``previous``'s leaves (or as a new tree)."""
    if salt_bytes < MIN_SALT_BYTES:
        raise ProofError(f"salts need at least {MIN_SALT_BYTES} bytes, got {salt_bytes}")
    count = int(np.asarray(y).shape[0]) if np.ndim(y) == 1 else 0
    if count == 0:
        raise ProofError("the forget set is empty; there is nothing to commit")
    salts = np.frombuffer(random_bytes(count * salt_bytes, rng), dtype=np.uint8)
    salts = salts.reshape(count, salt_bytes).copy()
    try:
        new_leaves = leaf_hashes(x, y, salts)
    except FormatError as exc:
        raise ProofError(f"cannot commit the forget set: {exc}") from exc
    old = previous.leaves if previous is not None else ()
    tree = MerkleTree([*old, *new_leaves])
    batch: PreviousBatch | None = None
    if old:
        batch = PreviousBatch(
            root=tree.root_at(len(old)).hex(),
            size=len(old),
            consistency_proof=tuple(h.hex() for h in tree.consistency_proof(len(old))),
        )
    return Commitment(tree=tree, salts=salts, first_leaf=len(old), previous=batch)
