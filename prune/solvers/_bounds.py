"""Sound upper bounds of linear objectives over linear regions, by weak LP duality.

For a region ``S = {x : lo <= x <= hi, G x <= h}`` and any multipliers ``lam >= 0``:

    max_{x in S} w.x  <=  max_{lo <= x <= hi} (w - G^T lam).x + lam.h
                       =  r.mid + |r|.rad + lam.h,     r = w - G^T lam,

because on ``S`` the added term ``lam.(h - G x)`` is non-negative, and dropping ``G x <= h``
only enlarges the feasible set; the box maximum is closed-form. The bound is therefore valid for
*every* ``lam >= 0`` - how ``lam`` was found (a few subgradient steps, an LP solver's duals,
nothing at all) only affects how tight it is, never whether it holds. All bound evaluations here
are float64; their own rounding (relative ~1e-15) is covered by the float32 slack the pipeline adds
to the margin.

Every solver reports its certified margin through :func:`spec_upper_bounds`, so the three solvers
are certified by the same, independently checkable formula."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from prune.regions import InputBox, Regions

__all__ = [
    "box_dual",
    "dense_dual_bound",
    "dual_bound",
    "lp_max",
    "spec_objectives",
    "spec_upper_bounds",
]


def box_dual(r: torch.Tensor, lam: torch.Tensor, h: torch.Tensor, box: InputBox) -> torch.Tensor:
    """``max_{x in box} r.x + lam.h`` in closed form, ``r [B,R,d]``, ``lam [B,R,H]``, ``h [B,H]``."""
    return (
        r.sum(dim=2) * box.mid + r.abs().sum(dim=2) * box.radius + (lam * h.unsqueeze(1)).sum(dim=2)
    )


def dual_bound(regions: Regions, W: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Upper bounds of ``max_{x in S} W[b, r].x`` (float64) for ``W [B,R,d]`` and any
    multipliers ``lam [B,R,H]`` (clamped at 0 here); returns ``[B,R]``. ``lam G`` is applied
    through the layers (:class:`prune.regions.RegionOperator`)."""
    lam = lam.to(torch.float64).clamp_min(0.0)
    r = W - regions.operator(torch.float64).apply_transpose(lam)
    return box_dual(r, lam, regions.h, regions.box)


def dense_dual_bound(
    G: torch.Tensor, h: torch.Tensor, box: InputBox, W: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """:func:`dual_bound` for an explicit constraint matrix ``G [B,H,d]`` (any polytope)."""
    lam = lam.to(torch.float64).clamp_min(0.0)
    return box_dual(W - torch.matmul(lam, G), lam, h, box)


def spec_objectives(
    regions: Regions,
    targets: torch.Tensor,
    *,
    C: torch.Tensor | None = None,
    d: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the spec "predict target t" for the patched head ``f + p``, ``p(x) = x C + d``:
    ``W [B,O,d]`` and ``const [B,O]`` with ``(f+p)_j - (f+p)_t = W_j.x + const_j`` on the region
    (row ``t`` is identically 0). ``C`` is ``[B,d,O]``, ``d`` is ``[B,O]``."""
    f1 = regions.F1
    f2 = regions.F2
    if C is not None:
        f1 = f1 + C.transpose(1, 2)
    if d is not None:
        f2 = f2 + d
    idx = targets.view(-1, 1, 1).expand(-1, 1, f1.shape[2])
    W = f1 - torch.gather(f1, 1, idx)
    const = f2 - torch.gather(f2, 1, targets.view(-1, 1))
    return W, const


def spec_upper_bounds(
    regions: Regions,
    targets: torch.Tensor,
    lam: torch.Tensor,
    *,
    C: torch.Tensor | None = None,
    d: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sound ``U [B,O]`` with ``(f+p)_j - (f+p)_t <= U_j`` on each region (``U_t = -inf``)."""
    W, const = spec_objectives(regions, targets, C=C, d=d)
    upper = dual_bound(regions, W, lam) + const
    return upper.scatter(1, targets.view(-1, 1), float("-inf"))


def lp_max(
    G: NDArray[np.float64],
    h: NDArray[np.float64],
    box: InputBox,
    w: NDArray[np.float64],
) -> tuple[float, NDArray[np.float64]]:
    """Solve ``max w.x`` over one region with HiGHS; return ``(LP value, lam)`` where ``lam >= 0``
    are the LP's multipliers of ``G x <= h``. Use ``lam`` with :func:`dual_bound` for a bound
    that does not depend on the solver's tolerances."""
    from scipy.optimize import linprog

    from prune.errors import PatchError

    res = linprog(
        -w,
        A_ub=G,
        b_ub=h,
        bounds=[(box.low, box.high)] * len(w),
        method="highs",
    )
    if res.status != 0:
        raise PatchError(f"the region LP failed: {res.message}")
    lam = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    return float(-res.fun), lam
