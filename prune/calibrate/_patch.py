"""The calibrated patch: the target logit vector at the sample, a true-class margin that rises at
most ``tolerance`` above the target's anywhere in the linear region, and a sound upper bound of
that margin.

For a region ``S`` with ``f(x) = F1 x + F2``, label ``y``, target logits ``t``, rival
``r = argmax_{j != y} t_j`` and margin gradient ``g = F1_y - F1_r``, the affine patch
``p(x) = x C + d`` has one non-zero column,

    C[:, y] = -alpha g,      d = t - f(x0) - x0 C,      alpha = clip(1 - tau / E, 0, 1),

with ``E`` a sound bound (weak duality) of how far the original margin rises over ``S`` above
its value at the sample ``x0``. Then ``(f+p)(x0) = t`` and on ``S`` the patched margin is
``m + (1 - alpha) (margin(x) - margin(x0))`` with ``m = t_y - t_r``: at most ``m + min(tau, E)``.
``tau = 0`` cancels the gradient (the margin is ``m`` everywhere on ``S``); but then every point
of the region gets the sample's margin, and test points of the rival class that share the
region flip to ``y`` (measured on digits, 500 points: 9 of the 10 test points the flat patch
got wrong). A positive ``tau`` keeps part of the original slope, so those points keep their
class. The obligation the claim states is one row, ``max_{x in S} (e_y - e_r) . (f+p)(x) <=
bound``; it is certified with the float32 parameters as exported and the multipliers
``(1 - alpha) lam`` as shipped (the dual bound is homogeneous in objective and multipliers), and
``bound`` is that certified value plus the slack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from prune.errors import PatchError
from prune.model import PLHead
from prune.regions import InputBox, linearize
from prune.solvers import LagrangianSolver, dual_bound
from prune.solvers._lagrangian import backward_multipliers

__all__ = ["DEFAULT_TOLERANCE", "CalibratedPatches", "calibrated_patches", "rivals"]

DEFAULT_TOLERANCE = 3.0
"""``tau`` (logits): how far above the target margin the true-class margin may rise anywhere in
the region. 0 flattens the margin completely (every point of the region gets the sample's
margin, including points of the rival class, which then flip to the label); larger values keep
more of the original model's slope (docs/BENCHMARKS.md, "Calibrated targets")."""


@dataclass(frozen=True, eq=False)
class CalibratedPatches:
    """Per region: ``C [P,d,O]`` and ``d [P,O]`` (float32-representable float64), the rival
    class ``[P]``, the target margin ``t_y - t_r`` ``[P]``, the sound upper bound of
    ``max_S (f+p)_y - (f+p)_r`` ``[P]``, the stated bound ``[P]`` (certified one + slack), the
    flattening ``alpha [P]`` and the certificate multipliers ``lam [P,H]`` (float32-exact) that
    prove the certified bound."""

    C: NDArray[np.float64]
    d: NDArray[np.float64]
    rival: NDArray[np.int64]
    target_margin: NDArray[np.float64]
    certified_upper: NDArray[np.float64]
    bound: NDArray[np.float64]
    alpha: NDArray[np.float64]
    lam: NDArray[np.float64]


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
    tolerance: float | NDArray[np.float64] = DEFAULT_TOLERANCE,
    batch_size: int = 128,
    solver: LagrangianSolver | None = None,
) -> CalibratedPatches:
    """One patch per row: cut value ``x [P,d]``, its pattern ``active [P,H]``, label, target
    logits ``[P,O]`` and the slack ``[P]`` added to the stated bound; ``tolerance`` is one
    value or one per row (``inf``: a constant patch).

    With ``g`` the region's margin gradient and ``E >= max_S (f_y - f_r) - (f_y - f_r)(x0)``
    (weak duality, multipliers ``lam``), the patch cancels the fraction
    ``alpha = clip(1 - tolerance / E, 0, 1)`` of ``g``: ``C[:, y] = -alpha g``, and
    ``d = t - f(x0) - x0 C``. The patched margin is ``m + (1 - alpha)(margin(x) - margin(x0))``,
    at most ``m + min(tolerance, E)`` on ``S``, proved by the multipliers ``(1 - alpha) lam``
    (the dual bound is homogeneous). Rows of another class keep ``1 - alpha`` of their original
    (negative) margin slope instead of all getting the sample's margin. Raises if a bound is
    not finite (degenerate region)."""
    n, n_out = len(x), head.classes
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (n,))
    if not (tol >= 0).all():
        raise PatchError(f"the calibrated tolerance must be >= 0, got {tolerance}")
    solver = solver or LagrangianSolver()
    rival = rivals(targets, labels)
    C = np.zeros((n, head.input_dim, n_out))
    d = np.zeros((n, n_out))
    upper, alpha = np.zeros(n), np.zeros(n)
    lam_out = np.zeros((n, head.n_hidden))
    logits, _ = head.forward(np.asarray(x, dtype=np.float64))
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        rows = np.arange(sl.stop - sl.start)
        y, r = labels[sl], rival[sl]
        regions = linearize(head, active[sl], box=box, dense=False)
        f1, f2 = regions.F1.numpy(), regions.F2.numpy()
        grad = f1[rows, y] - f1[rows, r]  # [B, d]
        c0 = f2[rows, y] - f2[rows, r]
        w = torch.from_numpy(grad).unsqueeze(1)
        init = backward_multipliers(regions, torch.from_numpy(r))[rows, y].unsqueeze(1)
        lam = solver.multipliers(regions, w, init=init).clamp_min(0.0)
        reach = dual_bound(regions, w, lam)[:, 0].numpy() + c0
        excess = reach - (logits[sl][rows, y] - logits[sl][rows, r])
        t_b = tol[sl]
        a_b = np.where(
            excess > t_b, 1.0 - np.minimum(t_b, excess) / np.maximum(excess, 1e-300), 0.0
        )
        c_b = np.zeros((len(rows), head.input_dim, n_out))
        c_b[rows, :, y] = -a_b[:, None] * grad
        c_b = c_b.astype(np.float32).astype(np.float64)
        d_b = targets[sl] - logits[sl] - np.einsum("bi,bio->bo", x[sl], c_b)
        d_b = d_b.astype(np.float32).astype(np.float64)
        # the certified row: (e_y - e_r) . (f + p) with the exported (float32) parameters and
        # the multipliers as shipped (float32)
        w_p = grad + c_b[rows, :, y] - c_b[rows, :, r]
        lam_p = ((1.0 - a_b)[:, None, None] * lam.numpy()).astype(np.float32).astype(np.float64)
        bound = dual_bound(regions, torch.from_numpy(w_p).unsqueeze(1), torch.from_numpy(lam_p))
        const = c0 + d_b[rows, y] - d_b[rows, r]
        C[sl], d[sl], alpha[sl] = c_b, d_b, a_b
        upper[sl], lam_out[sl] = bound[:, 0].numpy() + const, lam_p[:, 0]
    margin = targets[np.arange(n), labels] - targets[np.arange(n), rival]
    if not (np.isfinite(upper).all() and np.isfinite(d).all()):
        raise PatchError("a calibrated patch is not finite (degenerate region)")
    return CalibratedPatches(
        C=C,
        d=d,
        rival=rival,
        target_margin=margin,
        certified_upper=upper,
        bound=upper + slack,
        alpha=alpha,
        lam=lam_out,
    )
