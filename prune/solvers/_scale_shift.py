"""The PRUNE reference code's scale/shift heuristic (``LinearPatchNN`` / ``OneDimLinearTransform``
in the REASSURE/PRUNE repositories), as we read it.

The reference writes "predict t" as spec rows ``P_j = e_j - e_t`` (``j != t``) with bounds
``ql <= P_j f(x) <= qu``, ``ql = -100``, ``qu = 0``. It completes ``P`` with its orthogonal
complement (here the all-ones direction, the exact complement of these rows) and, for each spec
row, solves two LPs over the region: ``lb_j = min P_j F1 x`` and ``ub_j = max P_j F1 x``. With
``b_j = P_j F2``, ``OneDimLinearTransform`` picks a scale ``alpha_j`` (1 unless the range
``ub - lb`` exceeds ``qu - ql``, then ``(qu - ql) / (ub - lb)``) and a shift ``beta_j`` that moves
``[alpha lb + alpha b, alpha ub + alpha b]`` inside ``[ql, qu]``. The patch is
``f + p = P^-1 (diag(alpha) P f + beta)``, i.e. ``C = (P^-1 diag(alpha) P - I) F1``,
``d = (P^-1 diag(alpha) P - I) F2 + P^-1 beta``; the complement row keeps ``alpha = 1, beta = 0``.

Our departures, each to make the certificate exact: ``qu = -margin`` (the reference uses 0, a tie);
the reference's in-range test uses the unscaled ``b`` (identical when ``alpha = 1``, which is the
only case for spec ranges below 100); and ``ub_j`` is replaced by the weak-duality bound computed
from the LP's own multipliers (:func:`prune.solvers._bounds.lp_max`), so the shift is sized by a
sound bound rather than the solver's tolerance-limited optimum. Two LPs per row make it far slower
than the Lagrangian solver; it is kept as the reference behaviour and as a cross-check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from prune.regions import Regions
from prune.solvers._base import PatchSolution, certified_margins
from prune.solvers._bounds import dense_dual_bound, lp_max, spec_objectives, spec_upper_bounds

__all__ = ["ScaleShiftSolver"]


@dataclass(frozen=True)
class ScaleShiftSolver:
    """``spec_low`` is the reference's lower spec bound ``ql`` (-100)."""

    name: ClassVar[str] = "scale-shift"
    spec_low: float = -100.0

    needs_dense: ClassVar[bool] = True

    def options(self) -> dict[str, float | int | str]:
        return {"spec_low": self.spec_low}

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        G, h = regions.constraints()
        W, const = spec_objectives(regions, targets)
        n_out = W.shape[1]
        C = torch.zeros(len(regions), W.shape[2], n_out, dtype=torch.float64)
        d = torch.zeros(len(regions), n_out, dtype=torch.float64)
        lam = torch.zeros(len(regions), n_out, G.shape[1], dtype=torch.float64)
        for b in range(len(regions)):
            t = int(targets[b])
            g_b, h_b = G[b].numpy(), h[b].numpy()
            alpha = np.ones(n_out)
            beta = np.zeros(n_out)
            for k, j in enumerate(j for j in range(n_out) if j != t):
                _, lam_up = lp_max(g_b, h_b, regions.box, W[b, j].numpy())
                lower_lp, _ = lp_max(g_b, h_b, regions.box, -W[b, j].numpy())
                lam_j = torch.from_numpy(lam_up).view(1, 1, -1)
                upper = float(
                    dense_dual_bound(
                        G[b : b + 1], h[b : b + 1], regions.box, W[b : b + 1, j : j + 1], lam_j
                    )[0, 0]
                )
                alpha[k], beta[k] = _one_dim_transform(
                    -lower_lp, upper, float(const[b, j]), self.spec_low, -float(margin[b])
                )
                # row j of f + p is alpha_k (f_j - f_t) + beta_k: its multipliers scale by alpha_k
                lam[b, j] = lam_j.view(-1) * alpha[k]
            P = _spec_basis(n_out, t)
            P_inv = np.linalg.inv(P)
            T = P_inv @ np.diag(alpha) @ P - np.eye(n_out)
            C[b] = torch.from_numpy((T @ regions.F1[b].numpy()).T)
            d[b] = torch.from_numpy(T @ regions.F2[b].numpy() + P_inv @ beta)
        # alpha = 1 everywhere leaves C at rounding level (P^-1 P - I): drop it, then certify
        patch_c = None if bool((C.abs().amax() < 1e-12).item()) else C
        margins = certified_margins(spec_upper_bounds(regions, targets, lam, C=patch_c, d=d))
        return PatchSolution(C=patch_c, d=d, certified_margin=margins)


def _spec_basis(n_out: int, t: int) -> np.ndarray:
    """Rows ``e_j - e_t`` for ``j != t`` (in order), then the complement ``1/sqrt(O)``."""
    rows = [np.eye(n_out)[j] - np.eye(n_out)[t] for j in range(n_out) if j != t]
    rows.append(np.ones(n_out) / np.sqrt(n_out))
    return np.stack(rows)


def _one_dim_transform(lb: float, ub: float, b: float, ql: float, qu: float) -> tuple[float, float]:
    """``alpha, beta`` such that ``alpha * [lb + b, ub + b] + beta`` lies in ``[ql, qu]``."""
    alpha = 1.0 if ub - lb <= qu - ql else (qu - ql) / (ub - lb)
    low, high = alpha * (lb + b), alpha * (ub + b)
    if low >= ql and high <= qu:
        return alpha, 0.0
    if low < ql and high <= qu:
        return alpha, ql - low
    return alpha, qu - high
