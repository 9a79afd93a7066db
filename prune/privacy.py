"""Requester privacy for PRUNE: decoy deletions (threat 11, docs/THREAT_MODEL.md).

The risk: a patched model stores the activation pattern of every forgotten record's linear
region, so anyone with the model file and a pool of candidate records can test which candidates
lie in a patched region and single out who was deleted; even black-box, the records whose
prediction was changed stand out. Being deleted then reveals having asked.

The mitigation: for every requested record, also forget ``per_request`` decoys, training
records drawn uniformly at random (without replacement, never a requested one) from a generator
the owner keeps secret. Decoys are committed, patched and certified exactly like requested
records, and the forget set is shuffled, so neither the certificate, the openings, the receipts
folder nor the patch order tells them apart. A curious party still singles out deleted records,
but a deleted record is a requester only with probability about ``1 / (1 + per_request)``.

Invariants: the returned forget list holds every requested row once and ``per_request`` times as
many distinct decoys; its order is a uniform shuffle. Cost: ``per_request`` times more patches,
and the decoys' own predictions are changed too (measured in benchmarks/bench_leakage.py).

Limits: decoys drawn uniformly hide *typical* requesters; a requester whose record is an outlier
remains recognisable by its own features. The owner finds each requester's receipt by matching
the requester's sample against the openings (``forget.npz``); decoys' receipts are never handed
out. The generator must not be predictable to outsiders (the CLI seeds it from OS entropy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prune.errors import DataError

__all__ = ["DecoyPlan", "add_decoys"]


@dataclass(frozen=True, eq=False)
class DecoyPlan:
    """``forget_indices``: training rows to forget, in leaf order (requested and decoys,
    shuffled); ``requested``: a mask over them, True where the row was requested."""

    forget_indices: NDArray[np.int64]
    requested: NDArray[np.bool_]

    @property
    def decoys(self) -> NDArray[np.int64]:
        return self.forget_indices[~self.requested]

    @property
    def requested_leaves(self) -> NDArray[np.int64]:
        """Leaf indices (positions in the forget list) of the requested rows."""
        return np.flatnonzero(self.requested).astype(np.int64)


def add_decoys(
    requested: Sequence[int] | NDArray[np.integer],
    *,
    n_train: int,
    per_request: int,
    rng: np.random.Generator,
) -> DecoyPlan:
    """The requested rows plus ``per_request * len(requested)`` decoy rows, shuffled."""
    rows = np.asarray(requested, dtype=np.int64).reshape(-1)
    if len(rows) == 0:
        raise DataError("the forget set is empty")
    if per_request < 0:
        raise DataError(f"--decoys must be 0 or more, got {per_request}")
    if len(np.unique(rows)) != len(rows):
        raise DataError("a forget index is listed more than once")
    if rows.min() < 0 or rows.max() >= n_train:
        raise DataError(f"forget indices must lie in [0, {n_train})")
    wanted = per_request * len(rows)
    pool = np.setdiff1d(np.arange(n_train, dtype=np.int64), rows)
    if wanted > len(pool):
        raise DataError(
            f"{wanted} decoys requested but only {len(pool)} training rows are not being "
            "forgotten; lower --decoys"
        )
    decoys = rng.choice(pool, size=wanted, replace=False).astype(np.int64)
    order = rng.permutation(len(rows) + wanted)
    forget = np.concatenate([rows, decoys])[order]
    requested_mask = np.concatenate([np.ones(len(rows), bool), np.zeros(wanted, bool)])[order]
    return DecoyPlan(forget_indices=forget, requested=requested_mask)
