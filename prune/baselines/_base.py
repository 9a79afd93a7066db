"""The shape every baseline unlearning method has, and the checks on a forget request.

A method is a frozen dataclass whose fields are its hyperparameters (documented there, in one
place). It has two steps:

* :meth:`UnlearningMethod.prepare` trains the model the method serves. Most methods serve the
  standard model of the recipe; Amnesiac also logs every parameter update while training, and
  SISA trains an ensemble of shard models. Preparation never sees the forget set: deletion
  requests are not known at training time.
* :meth:`UnlearningMethod.unlearn` takes that model and a forget request and returns a new
  model; the model passed in is never modified.

Threat assumption: these are owner-side methods. Nothing here produces evidence an auditor could
check; the auditor can only compare outputs (accuracy, distance to a retrained model,
membership inference), which is what the benchmark study does.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prune.baselines._recipe import TrainRecipe, fit
from prune.errors import DataError, PruneError

__all__ = ["BaselineError", "UnlearningMethod", "check_forget", "retain_indices"]


class BaselineError(PruneError):
    """A baseline cannot run on the model or the data it was given."""


class UnlearningMethod(abc.ABC):
    """An owner-side unlearning method (see the module docstring for the contract)."""

    name: ClassVar[str]

    def prepare(
        self,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        *,
        recipe: TrainRecipe,
        seed: int | None = None,
    ) -> nn.Module:
        """Train the model this method unlearns from (default: the recipe's standard model)."""
        return fit(recipe, x_train, y_train, seed=seed)

    @abc.abstractmethod
    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        """A new model with the rows ``forget_idx`` of ``x_train`` unlearned.

        ``x_train, y_train`` is the full training set the model was prepared on; all randomness
        comes from ``generator``."""


def check_forget(forget_idx: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Validate a forget request against a training set of ``n`` rows; return it sorted.

    An empty request, a request for every row, duplicates and out-of-range indices are errors:
    an empty request would make any method "succeed", and silently dropping bad indices would
    report unlearning of points that were never removed."""
    idx = np.asarray(forget_idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DataError("forget indices must be a 1-D array of integers")
    if idx.size == 0:
        raise DataError("the forget set is empty: nothing to unlearn")
    if idx.min() < 0 or idx.max() >= n:
        raise DataError(f"forget indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
    out = np.unique(idx).astype(np.int64)
    if out.size != idx.size:
        raise DataError("forget indices contain duplicates")
    if out.size == n:
        raise DataError("the forget set is the whole training set: nothing would remain")
    return out


def retain_indices(forget_idx: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """The rows of a training set of ``n`` rows that are not in ``forget_idx``."""
    keep = np.ones(n, dtype=bool)
    keep[forget_idx] = False
    return np.flatnonzero(keep).astype(np.int64)
