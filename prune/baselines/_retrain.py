"""Retrain from scratch without the forget set: the gold standard every other method is held to.

Invariant: the result is exactly the model the recipe would have produced on the retained rows,
with the initialisation and batch-order seed ``seed`` (``None``: a seed drawn from the caller's
generator, so that two retrains with different generators measure the seed-to-seed noise floor).
Cost: one full training run on the retained data, every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prune.baselines._base import UnlearningMethod, check_forget, retain_indices
from prune.baselines._recipe import TrainRecipe, fit

__all__ = ["Retrain"]


@dataclass(frozen=True, kw_only=True)
class Retrain(UnlearningMethod):
    """Hyperparameters: ``recipe`` (the training recipe of the original model, unchanged) and
    ``seed`` (``None``: drawn from the generator; an int: that seed, e.g. the original's)."""

    name: ClassVar[str] = "retrain"
    recipe: TrainRecipe
    seed: int | None = None

    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        forget = check_forget(forget_idx, len(x_train))
        keep = retain_indices(forget, len(x_train))
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        return fit(self.recipe, x_train[keep], y_train[keep], seed=seed)
