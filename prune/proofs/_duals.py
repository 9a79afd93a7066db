"""The region certificate the owner ships: per certified claim and obligation row, the dual
multipliers of the region's constraints (docs/FORMATS.md, "Region certificate").

For a ``flip`` claim of patch ``u`` with target ``t`` the rows are the classes ``j != t`` in
ascending order (:meth:`prune.formats.ClaimRecord.obligations`); row ``j`` carries multipliers
``lam >= 0`` with ``max_{x in S_u} (f + p_u)_j - (f + p_u)_t <= max_box L_lam``. They come from
the same projected dual ascent as the Lagrangian solver (:meth:`LagrangianSolver.multipliers`,
started from :func:`backward_multipliers` for constant patches), in batches of regions. Any
``lam >= 0`` is sound; the verifier recomputes the bound itself, so this module only decides how
tight the certificate is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prune.claims import Claim
from prune.model import PLHead
from prune.regions import InputBox, Regions, linearize
from prune.solvers import LagrangianSolver, spec_objectives
from prune.solvers._bounds import lp_max
from prune.solvers._lagrangian import backward_multipliers

__all__ = ["float32_logit_error", "region_duals"]


def region_duals(
    head: PLHead,
    box: InputBox,
    *,
    active: NDArray[np.bool_],
    targets: NDArray[np.int64],
    C: NDArray[np.float64] | None,
    d: NDArray[np.float64],
    claims: Sequence[Claim],
    batch_size: int = 32,
    solver: LagrangianSolver | None = None,
    exact: bool = False,
    multipliers: NDArray[np.floating[Any]] | None = None,
) -> NDArray[np.float32]:
    """Multipliers ``[rows, H]`` (float32) for the certified ``claims`` in order, each claim's
    rows ``j != target`` ascending. ``active [P, H]``, ``targets [P]``, ``C [P, d, O]`` or None
    and ``d [P, O]`` describe the exported patches.

    ``multipliers [P, O, H]``: the patch solver's own (constant patches only, whose objectives
    do not depend on ``d``), shipped as they are instead of a second solve.

    ``exact``: the LP's own multipliers (HiGHS marginals of ``max_{x in S_u} row_j``, one LP per
    row) instead of the Lagrangian dual ascent. The LP solvers size each patch to the exact LP
    optimum, which the ascent's looser bound does not reach (measured: ``scale-shift`` proofs
    failed ``region.certificate`` by up to 12.6 logits with ascent multipliers); their
    certificates need the LP's multipliers, as their patches were certified with."""
    certified = [c for c in claims if c.region == "certified"]
    patches = sorted({c.patch for c in certified})
    per_patch: dict[int, NDArray[np.floating[Any]]] = {}
    solver = solver or LagrangianSolver()
    if multipliers is not None and not exact and C is None and multipliers.shape[:2] == d.shape:
        per_patch = {u: np.maximum(multipliers[u], 0.0) for u in patches}
        patches = []
    for start in range(0, len(patches), batch_size):
        chunk = np.asarray(patches[start : start + batch_size], dtype=np.int64)
        regions = linearize(head, active[chunk], box=box, dense=exact)
        t = torch.from_numpy(targets[chunk])
        c_t = None if C is None else torch.from_numpy(C[chunk])
        d_t = torch.from_numpy(d[chunk])
        W, _ = spec_objectives(regions, t, C=c_t, d=d_t)
        if exact:
            lam = _lp_multipliers(regions, W, targets[chunk])
        else:
            init = backward_multipliers(regions, t) if C is None else None
            lam = solver.multipliers(regions, W, init=init).clamp_min(0.0).numpy()
        for i, u in enumerate(chunk.tolist()):
            per_patch[u] = lam[i]
    classes = d.shape[1]
    rows: list[NDArray[np.floating[Any]]] = []
    for claim in certified:
        if claim.target != int(targets[claim.patch]):
            raise ValueError(f"claim {claim.leaf_index}: target differs from its patch's target")
        others = [j for j in range(classes) if j != claim.target]
        rows.append(per_patch[claim.patch][others])
    if not rows:
        return np.zeros((0, head.n_hidden), dtype=np.float32)
    # float32 storage rounds each multiplier; any lam >= 0 is sound, so this costs tightness only
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


def _lp_multipliers(
    regions: Regions, W: torch.Tensor, targets: NDArray[np.int64]
) -> NDArray[np.float64]:
    """``[B, O, H]``: per region and spec row ``j != t``, the multipliers of ``G x <= h`` at the
    LP optimum of ``max W_j . x`` over the region (row ``t`` stays 0)."""
    G, h = regions.constraints()
    lam = np.zeros((W.shape[0], W.shape[1], G.shape[1]))
    for b in range(W.shape[0]):
        g_b, h_b = G[b].numpy(), h[b].numpy()
        for j in range(W.shape[1]):
            if j != int(targets[b]):
                _, lam[b, j] = lp_max(g_b, h_b, regions.box, W[b, j].numpy())
    return lam


def float32_logit_error(
    head: PLHead, active: NDArray[np.bool_], box: InputBox
) -> NDArray[np.float64]:
    """A rigorous bound ``[N, O]`` on ``|logits computed in float32 - exact logits|`` at every
    point of the box whose exact activation pattern is ``active[n]``, for any float32 kernel
    that sums products in any order (``gamma_n = n u / (1 - n u)``, ``u = 2^-24``), ReLU being
    1-Lipschitz. The owner adds ``2 max_o`` of it to the margin each region must certify, so
    that the verifier's own bound (``region.certificate``, same assumptions) holds."""
    u = 2.0**-24

    def gamma(n: int) -> float:
        return n * u / (1.0 - n * u)

    scale = max(abs(box.low), abs(box.high))
    masks = np.split(
        np.asarray(active, dtype=np.float64), np.cumsum(head.hidden_sizes)[:-1], axis=1
    )
    first = head.layers[0]
    zt = np.abs(first.weight).sum(axis=1) * scale + np.abs(first.bias)
    zt = np.broadcast_to(zt, (len(active), len(zt))).copy()
    g = gamma(first.weight.shape[1] + 2)
    err = g * zt
    for i, layer in enumerate(head.layers[1:]):
        m, mag = masks[i], zt * (1.0 + g)
        # an inactive unit passes |slope| of its value (LeakyRelu/PRelu; 1 for a carried
        # tensor), and the activation is max(1, |slope|)-Lipschitz: the verifier's form
        slope = np.abs(head.slope(i))[None, :]
        lip = np.maximum(1.0, slope)
        a_bound = (m + (1.0 - m) * slope) * mag + (1.0 - m) * lip * np.minimum(err, mag)
        g = gamma(layer.weight.shape[1] + 2)
        w_abs = np.abs(layer.weight)
        zt = a_bound @ w_abs.T + np.abs(layer.bias)
        err = (lip * err) @ w_abs.T + g * zt
    return np.asarray(err + u * zt * (1.0 + g))
