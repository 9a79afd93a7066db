"""The calibrated patch: the target logit vector at the sample, a flat true-class margin over the
whole linear region, and a sound upper bound of that margin.

For a region ``S`` with ``f(x) = F1 x + F2``, label ``y``, target logits ``t`` and rival
``r = argmax_{j != y} t_j``, the affine patch ``p(x) = x C + d`` has one non-zero column,

    C[:, y] = -(F1_y - F1_r),      d = t - f(x0) - x0 C,

so that ``(f+p)(x0) = t`` at the sample ``x0`` and, for *every* ``x`` in ``S``,
``(f+p)_y(x) - (f+p)_r(x) = t_y - t_r`` (the gradient of the margin is cancelled): the patched
model is nowhere in the region more confident in the true class, over the rival, than the
out-model is at the sample. The obligation the claim states is one row, ``max_{x in S}
(e_y - e_r) . (f+p)(x) <= bound``; it is certified with the float32 parameters as exported, by
the weak-duality bound of :mod:`prune.solvers._bounds` (the cancelled gradient leaves only the
rounding residual of ``C``), and ``bound = t_y - t_r + slack`` is required to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from prune.errors import PatchError
from prune.model import PLHead
from prune.regions import InputBox, linearize
from prune.solvers import dual_bound

__all__ = ["CalibratedPatches", "calibrated_patches", "rivals"]


@dataclass(frozen=True, eq=False)
class CalibratedPatches:
    """Per region: ``C [P,d,O]`` and ``d [P,O]`` (float32-representable float64), the rival
    class ``[P]``, the target margin ``t_y - t_r`` ``[P]``, the sound upper bound of
    ``max_S (f+p)_y - (f+p)_r`` ``[P]`` and the stated bound ``[P]`` (``>=`` the certified one)."""

    C: NDArray[np.float64]
    d: NDArray[np.float64]
    rival: NDArray[np.int64]
    target_margin: NDArray[np.float64]
    certified_upper: NDArray[np.float64]
    bound: NDArray[np.float64]


def rivals(targets: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """The highest target logit other than the label, per row."""
    other = np.asarray(targets, dtype=np.float64).copy()
    other[np.arange(len(other)), labels] = -np.inf
    return np.asarray(other.argmax(axis=1), dtype=np.int64)


def calibrated_patches(
    head: PLHead,
    box: InputBox,
    x: NDArray[np.float64],
    active: NDArray[np.bool_],
    labels: NDArray[np.int64],
    targets: NDArray[np.float64],
    slack: NDArray[np.float64],
    *,
    batch_size: int = 64,
) -> CalibratedPatches:
    """One patch per row: cut value ``x [P,d]``, its pattern ``active [P,H]``, label, target
    logits ``[P,O]`` and the slack ``[P]`` added to the stated bound. Raises if a certified
    bound exceeds the stated one (it cannot in exact arithmetic; a degenerate region could)."""
    n, n_out = len(x), head.classes
    rival = rivals(targets, labels)
    C = np.zeros((n, head.input_dim, n_out))
    d = np.zeros((n, n_out))
    upper = np.zeros(n)
    logits, _ = head.forward(np.asarray(x, dtype=np.float64))
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        rows = np.arange(sl.stop - sl.start)
        regions = linearize(head, active[sl], box=box, dense=False)
        f1 = regions.F1.numpy()
        grad = f1[rows, labels[sl]] - f1[rows, rival[sl]]  # [B, d]
        c_b = np.zeros((len(rows), head.input_dim, n_out))
        c_b[rows, :, labels[sl]] = -grad
        c_b = c_b.astype(np.float32).astype(np.float64)
        d_b = targets[sl] - logits[sl] - np.einsum("bi,bio->bo", x[sl], c_b)
        d_b = d_b.astype(np.float32).astype(np.float64)
        # the certified row: (e_y - e_r) . (f + p) with the exported (float32) parameters
        w = grad + c_b[rows, :, labels[sl]] - c_b[rows, :, rival[sl]]
        f2 = regions.F2.numpy()
        const = f2[rows, labels[sl]] - f2[rows, rival[sl]] + d_b[rows, labels[sl]]
        const = const - d_b[rows, rival[sl]]
        lam = torch.zeros(len(rows), 1, regions.active.shape[1], dtype=torch.float64)
        bound = dual_bound(regions, torch.from_numpy(w).unsqueeze(1), lam)[:, 0].numpy()
        C[sl], d[sl], upper[sl] = c_b, d_b, bound + const
    margin = targets[np.arange(n), labels] - targets[np.arange(n), rival]
    stated = margin + slack
    if not (np.isfinite(upper).all() and np.isfinite(d).all()):
        raise PatchError("a calibrated patch is not finite (degenerate region)")
    if (upper > stated).any():
        worst = int(np.argmax(upper - stated))
        raise PatchError(
            f"calibrated patch {worst}: certified margin bound {upper[worst]:.6g} exceeds the "
            f"stated {stated[worst]:.6g}"
        )
    return CalibratedPatches(
        C=C,
        d=d,
        rival=rival,
        target_margin=margin,
        certified_upper=upper,
        bound=stated,
    )
