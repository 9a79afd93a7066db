"""Validation of an unlearning request: the data, the model's input shape, the forget set.

Every problem is a :class:`DataError` with one actionable line, raised before any work starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from prune.errors import DataError

__all__ = ["ForgetRequest", "Mode", "check_data", "forget_request"]

Mode = Literal["samples", "class"]


@dataclass(frozen=True, eq=False)
class ForgetRequest:
    """Which training rows to forget, in commitment (leaf) order: the order given for samples,
    ascending train index for a class."""

    mode: Mode
    indices: NDArray[np.int64]
    forget_class: int | None


def check_data(
    x: NDArray[np.floating] | None,
    y: NDArray[np.integer] | None,
    *,
    name: str,
    input_shape: tuple[int, ...],
) -> None:
    """``x [N, *input_shape]`` finite floats and ``y [N]`` non-negative integers."""
    if x is None or y is None:
        raise DataError(f"{name}: both x and y are required")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: x must be float32, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: y must be int64, got {y.dtype}")
    if y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{name}: x must be [N, ...] and y [N], got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise DataError(f"{name} holds no samples")
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{name}: samples have shape {tuple(x.shape[1:])}, the model expects {tuple(input_shape)}"
        )
    # NaN propagates through min/max and an infinity is one of them: two reductions, no
    # [N, ...] boolean temporary (the training set is read once per request)
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        raise DataError(f"{name}: x contains NaN or inf")
    if (y < 0).any():
        raise DataError(f"{name}: labels must be non-negative")


def forget_request(
    y_train: NDArray[np.integer],
    *,
    forget_indices: Sequence[int] | NDArray[np.integer] | None,
    forget_class: int | None,
    classes: int,
) -> ForgetRequest:
    """Exactly one of ``forget_indices`` (distinct, in range) and ``forget_class`` (present)."""
    if (forget_indices is None) == (forget_class is None):
        raise DataError("give exactly one of a forget-index list and a forget class")
    if forget_class is not None:
        k = int(forget_class)
        if not 0 <= k < classes:
            raise DataError(f"class {k} is not a class of the model (0..{classes - 1})")
        rows = np.flatnonzero(np.asarray(y_train) == k).astype(np.int64)
        if len(rows) == 0:
            raise DataError(f"class {k} does not occur in the training data")
        return ForgetRequest(mode="class", indices=rows, forget_class=k)
    assert forget_indices is not None
    raw = np.asarray(forget_indices)
    if raw.size == 0:
        raise DataError("the forget set is empty")
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
        raise DataError("forget indices must be a flat list of integers")
    idx = raw.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= len(y_train))]
    if len(bad):
        raise DataError(
            f"forget index {int(bad[0])} is out of range (the training data has {len(y_train)} rows)"
        )
    values, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"forget index {int(values[counts > 1][0])} is listed more than once")
    return ForgetRequest(mode="samples", indices=idx, forget_class=None)
