"""REASSURE's minimal patch (Fu & Li, ICLR 2022): the affine ``p(x) = x C + d`` of least
``max_{x in S} |p(x)|_inf`` under which the spec holds on the whole region.

One LP per region, in the variables ``C [d,O]``, ``d [O]``, ``H`` and, for every inner maximum
``max_{x in S} w(C).x + c(d) <= rhs``, its dual certificate: by LP duality that inner maximum is
at most ``rhs`` iff there are ``lam >= 0`` (region rows), ``u, v >= 0`` (box rows) with
``G^T lam + u - v = w(C)`` and ``h.lam + hi.u - lo.v + c(d) <= rhs``. Inner maxima:
``+p_i <= H`` and ``-p_i <= H`` for every output ``i``, and ``(f+p)_j - (f+p)_t <= -margin`` for
every ``j != t``. Minimise ``H``; HiGHS (``scipy.optimize.linprog``). The certified margin is
recomputed from the spec rows' ``lam`` with :func:`prune.solvers._bounds.spec_upper_bounds`, so
solver tolerances cannot inflate it. The LP has ``(3O - 1)(H + 2d)`` dual variables and a dense
``G^T`` block per inner maximum: it is the slow, exact reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from prune.errors import PatchError
from prune.regions import Regions
from prune.solvers._base import PatchSolution, certified_margins
from prune.solvers._bounds import spec_upper_bounds

__all__ = ["ReassureSolver"]


@dataclass(frozen=True)
class ReassureSolver:
    """Minimal L-inf affine patch per region (one HiGHS LP each). ``time_limit`` (seconds per
    LP, None: no limit) turns an LP that runs past it into a :class:`PatchError`."""

    name: ClassVar[str] = "reassure"
    time_limit: float | None = None

    needs_dense: ClassVar[bool] = True

    def options(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"norm": "linf"}
        if self.time_limit is not None:
            out["time_limit"] = self.time_limit
        return out

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        G, h = regions.constraints()
        n_out = regions.F1.shape[1]
        C = torch.zeros(len(regions), regions.F1.shape[2], n_out, dtype=torch.float64)
        d = torch.zeros(len(regions), n_out, dtype=torch.float64)
        lam = torch.zeros(len(regions), n_out, G.shape[1], dtype=torch.float64)
        for b in range(len(regions)):
            C[b], d[b], lam[b] = self._solve_one(
                regions, b, int(targets[b]), G[b], h[b], float(margin[b])
            )
        patch_c = None if bool((C.abs().amax() == 0).item()) else C
        margins = certified_margins(spec_upper_bounds(regions, targets, lam, C=patch_c, d=d))
        return PatchSolution(C=patch_c, d=d, certified_margin=margins)

    def _solve_one(
        self,
        regions: Regions,
        b: int,
        t: int,
        G_b: torch.Tensor,
        h_b: torch.Tensor,
        margin: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from scipy.optimize import linprog

        g = G_b.numpy()
        h = h_b.numpy()
        n_h, dim = g.shape
        n_out = regions.F1.shape[1]
        f1 = regions.F1[b].numpy()
        f2 = regions.F2[b].numpy()
        lo, hi = regions.box.low, regions.box.high
        # variable layout: C (dim*n_out, column-major by output), d (n_out), H, then per group
        n_c = dim * n_out
        base = n_c + n_out + 1
        group = n_h + 2 * dim
        # groups: (sign s, output i) for |p_i| <= H, then spec rows (j, t)
        groups: list[tuple[str, int]] = [("+", i) for i in range(n_out)]
        groups += [("-", i) for i in range(n_out)]
        groups += [("spec", j) for j in range(n_out) if j != t]
        n_var = base + group * len(groups)
        eq_blocks: list[sp.spmatrix] = []
        eq_rhs: list[np.ndarray] = []
        ub_rows: list[sp.spmatrix] = []
        ub_rhs: list[float] = []
        dual_block = sp.hstack([sp.csr_matrix(g.T), sp.eye(dim), -sp.eye(dim)]).tocsr()
        dual_obj = np.concatenate([h, np.full(dim, hi), np.full(dim, -lo)])
        for k, (kind, i) in enumerate(groups):
            off = base + group * k
            c_coef = sp.lil_matrix((dim, n_c))
            d_coef = np.zeros(n_out)
            rhs_eq = np.zeros(dim)
            if kind == "+":
                c_coef[:, i * dim : (i + 1) * dim] = -sp.eye(dim)
                d_coef[i], rhs_ub, h_coef = 1.0, 0.0, -1.0
            elif kind == "-":
                c_coef[:, i * dim : (i + 1) * dim] = sp.eye(dim)
                d_coef[i], rhs_ub, h_coef = -1.0, 0.0, -1.0
            else:
                c_coef[:, i * dim : (i + 1) * dim] = -sp.eye(dim)
                c_coef[:, t * dim : (t + 1) * dim] = sp.eye(dim)
                d_coef[i], d_coef[t] = 1.0, -1.0
                rhs_eq = f1[i] - f1[t]
                rhs_ub, h_coef = -margin - (f2[i] - f2[t]), 0.0
            row = sp.hstack(
                [
                    c_coef.tocsr(),
                    sp.csr_matrix((dim, n_out + 1)),
                    sp.csr_matrix((dim, off - base)),
                    dual_block,
                    sp.csr_matrix((dim, n_var - off - group)),
                ]
            )
            eq_blocks.append(row)
            eq_rhs.append(rhs_eq)
            ub = np.zeros(n_var)
            ub[n_c : n_c + n_out] = d_coef
            ub[n_c + n_out] = h_coef
            ub[off : off + group] = dual_obj
            ub_rows.append(sp.csr_matrix(ub))
            ub_rhs.append(rhs_ub)
        cost = np.zeros(n_var)
        cost[n_c + n_out] = 1.0
        bounds = [(None, None)] * (n_c + n_out) + [(0, None)] * (1 + group * len(groups))
        res = linprog(
            cost,
            A_ub=sp.vstack(ub_rows).tocsr(),
            b_ub=np.asarray(ub_rhs),
            A_eq=sp.vstack(eq_blocks).tocsr(),
            b_eq=np.concatenate(eq_rhs),
            bounds=bounds,
            method="highs",
            options={} if self.time_limit is None else {"time_limit": self.time_limit},
        )
        if res.status != 0:
            raise PatchError(f"the REASSURE LP failed: {res.message}")
        x = res.x
        C_b = x[:n_c].reshape(n_out, dim).T
        d_b = x[n_c : n_c + n_out]
        lam_b = np.zeros((n_out, n_h))
        for k, (kind, i) in enumerate(groups):
            if kind == "spec":
                off = base + group * k
                lam_b[i] = np.maximum(x[off : off + n_h], 0.0)
        return torch.from_numpy(C_b.copy()), torch.from_numpy(d_b.copy()), torch.from_numpy(lam_b)
