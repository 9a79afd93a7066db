"""SISA training (Bourtoule et al., IEEE S&P 2021): sharded, isolated models; exact unlearning by
retraining only the shards that held a forgotten row.

The training set is split at random into ``shards`` disjoint shards; one network is trained on
each with the standard recipe (same epochs, so each sees 1/S of the data and takes 1/S of the
steps). The ensemble predicts ``log(mean_s softmax(f_s(x)))`` — averaged probabilities, written as
logits so that argmax, cross-entropy and KL work as for a single model, and the whole ensemble
exports to one ONNX graph.

Invariants: a shard's model is always exactly ``fit(recipe, x[rows_s], y[rows_s], seed=seed_s)``
for its *current* rows, so unlearning is exact (the ensemble equals the one trained without the
forgotten rows from the start). Unaffected shards are not touched; ``retrain_counts`` records how
often each shard was retrained. Slicing (checkpoints inside a shard) is not implemented: a
retrained shard starts from scratch. Costs: S times the parameters and inference time, lower
accuracy than one model on all the data, and a class-level request touches every shard (a full
retrain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prune.baselines._base import BaselineError, UnlearningMethod, check_forget
from prune.baselines._recipe import TrainRecipe, fit

__all__ = ["Sisa", "SisaEnsemble"]


class SisaEnsemble(nn.Module):
    """Shard models with the rows and seed each was trained on."""

    def __init__(
        self,
        members: list[nn.Module],
        *,
        recipe: TrainRecipe,
        shard_rows: tuple[NDArray[np.int64], ...],
        seeds: tuple[int, ...],
        retrain_counts: tuple[int, ...],
    ) -> None:
        super().__init__()
        if not len(members) == len(shard_rows) == len(seeds) == len(retrain_counts):
            raise BaselineError("SISA: members, shards, seeds and counts must align")
        self.members = nn.ModuleList(members)
        self.recipe = recipe
        self.shard_rows = shard_rows
        self.seeds = seeds
        self.retrain_counts = retrain_counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members])
        return torch.log(probs.mean(dim=0).clamp_min(1e-30))


@dataclass(frozen=True, kw_only=True)
class Sisa(UnlearningMethod):
    """Hyperparameter: ``shards`` (S). The shard split and the shard seeds are drawn from a numpy
    generator seeded with the preparation seed."""

    name: ClassVar[str] = "sisa"
    shards: int = 5

    def prepare(
        self,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        *,
        recipe: TrainRecipe,
        seed: int | None = None,
    ) -> nn.Module:
        if self.shards < 1 or self.shards > len(x_train):
            raise BaselineError(f"SISA needs 1 <= shards <= {len(x_train)}, got {self.shards}")
        rng = np.random.default_rng(recipe.config.seed if seed is None else seed)
        order = rng.permutation(len(x_train)).astype(np.int64)
        shard_rows = tuple(np.sort(part) for part in np.array_split(order, self.shards))
        seeds = tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=self.shards))
        members = [
            fit(recipe, x_train[rows], y_train[rows], seed=s)
            for rows, s in zip(shard_rows, seeds, strict=True)
        ]
        return SisaEnsemble(
            members,
            recipe=recipe,
            shard_rows=shard_rows,
            seeds=seeds,
            retrain_counts=(0,) * self.shards,
        )

    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        """Retrain exactly the shards that hold a forgotten row (``generator`` is unused: SISA's
        retraining replays each shard's own seed, which makes it exact)."""
        if not isinstance(model, SisaEnsemble):
            raise BaselineError("SISA unlearning needs the ensemble from Sisa.prepare")
        forget = check_forget(forget_idx, len(x_train))
        members = list(model.members)
        rows = list(model.shard_rows)
        counts = list(model.retrain_counts)
        for s, shard in enumerate(model.shard_rows):
            gone = np.isin(shard, forget)
            if not gone.any():
                continue
            kept = shard[~gone]
            if kept.size == 0:
                raise BaselineError(f"SISA: shard {s} would be empty after unlearning")
            members[s] = fit(model.recipe, x_train[kept], y_train[kept], seed=model.seeds[s])
            rows[s] = kept
            counts[s] += 1
        return SisaEnsemble(
            members,
            recipe=model.recipe,
            shard_rows=tuple(rows),
            seeds=model.seeds,
            retrain_counts=tuple(counts),
        )
