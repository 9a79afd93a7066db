"""Multi-point strategies: which regions get a patch, with which target and parameters.

Registry ``STRATEGIES``:

* ``individual`` (default): one patch per distinct region, solved in vectorised batches.
* ``clustered`` (PRUNE, Theorem 2): KMeans on the pending points in cut space; the real forget
  point nearest each centroid is the representative; its patch is solved on its own region and
  offered to every member's region (same ``C, d`` behind each member's own gate). A member is
  taken only if the representative's patch is *certified on the member's region* (sound bound,
  :mod:`prune.solvers._bounds`); the rest are re-clustered in the next round, and what is left
  after ``max_rounds`` is reported, never claimed.

Strategies see one unit per *distinct* region (:func:`plan_patches` merges forget points with the
same activation pattern: one patch, whose target avoids all their labels). Both return a
:class:`Plan`; every patch in it carries a sound certified margin for its region."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from prune.model import PLHead
from prune.regions import InputBox, linearize, pattern_keys
from prune.solvers import LagrangianSolver, Solver, spec_objectives, spec_upper_bounds
from prune.solvers._lagrangian import backward_multipliers
from prune.targets import choose_targets
from prune.unlearn._harmonise import harmonised_targets

__all__ = [
    "STRATEGIES",
    "ForgetPoints",
    "Plan",
    "SolveContext",
    "Solved",
    "Strategy",
    "plan_patches",
    "solve_regions",
    "solve_with_duals",
]


@dataclass(frozen=True, eq=False)
class SolveContext:
    head: PLHead
    box: InputBox
    solver: Solver
    target_policy: str
    rng: np.random.Generator
    batch_size: int = 256  # regions linearised and solved together (GEMMs over B*O rows)
    progress: bool = False
    cluster_size: int = 10
    max_rounds: int = 10
    harmonise_hamming: int = 3


@dataclass(frozen=True, eq=False)
class ForgetPoints:
    """Per forget point (leaf order): cut value ``x [M,d]``, pattern ``active [M,H]`` (as the
    runtime computes it), original float64 head logits ``[M,O]``, forbidden targets ``[M,O]``
    and the certified margin each one needs (requested margin + float32 slack) ``[M]``."""

    x: NDArray[np.float64]
    active: NDArray[np.bool_]
    logits: NDArray[np.float64]
    forbidden: NDArray[np.bool_]
    required: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True, eq=False)
class Plan:
    """``P`` patches and the patch of each forget point (``patch_of[m] = -1``: none)."""

    active: NDArray[np.bool_]
    targets: NDArray[np.int64]
    C: NDArray[np.float64] | None
    d: NDArray[np.float64]
    certified: NDArray[np.float64]
    required: NDArray[np.float64]
    patch_of: NDArray[np.int64]
    rounds: int = 1
    multipliers: NDArray[np.float32] | None = None
    """``[P, O, H]``: the solver's certifying multipliers of each patch's own region (None when
    the strategy offers patches to other regions or the solver keeps none)."""


@dataclass(frozen=True, eq=False)
class Solved:
    """Patches of ``B`` regions: ``C [B,d,O]`` or None, ``d [B,O]``, certified margins ``[B]``
    (each ``>= required``) and, when the solver keeps them, the multipliers ``[B,O,H]``
    (float32) that certify those margins (:attr:`prune.solvers.PatchSolution.multipliers`)."""

    C: NDArray[np.float64] | None
    d: NDArray[np.float64]
    certified: NDArray[np.float64]
    multipliers: NDArray[np.float32] | None


def solve_with_duals(
    ctx: SolveContext,
    active: NDArray[np.bool_],
    targets: NDArray[np.int64],
    required: NDArray[np.float64],
) -> Solved:
    """Solve the patch of each region, in batches of ``ctx.batch_size``."""
    from tqdm import tqdm

    n, n_out = len(active), ctx.head.classes
    d = np.zeros((n, n_out))
    certified = np.zeros(n)
    C: NDArray[np.float64] | None = None
    lam: NDArray[np.float32] | None = None
    kept = True
    with tqdm(total=n, desc="patch", unit="region", disable=not ctx.progress, leave=False) as bar:
        for start in range(0, n, ctx.batch_size):
            sl = slice(start, min(start + ctx.batch_size, n))
            regions = linearize(ctx.head, active[sl], box=ctx.box, dense=ctx.solver.needs_dense)
            sol = ctx.solver.solve(
                regions,
                torch.from_numpy(targets[sl]),
                margin=torch.from_numpy(required[sl]),
            )
            d[sl] = sol.d.numpy()
            certified[sl] = sol.certified_margin.numpy()
            if sol.C is not None:
                if C is None:
                    C = np.zeros((n, ctx.head.input_dim, n_out))
                C[sl] = sol.C.numpy()
            kept = kept and sol.multipliers is not None
            if kept and sol.multipliers is not None:
                if lam is None:
                    lam = np.zeros((n, n_out, sol.multipliers.shape[2]), dtype=np.float32)
                lam[sl] = sol.multipliers.numpy()
            bar.update(sl.stop - sl.start)
    return Solved(C=C, d=d, certified=certified, multipliers=lam if kept else None)


def solve_regions(
    ctx: SolveContext,
    active: NDArray[np.bool_],
    targets: NDArray[np.int64],
    required: NDArray[np.float64],
) -> tuple[NDArray[np.float64] | None, NDArray[np.float64], NDArray[np.float64]]:
    """Solve the patch of each region (batched): ``C [B,d,O]`` or None, ``d [B,O]``, certified
    margins ``[B]`` (each ``>= required``)."""
    solved = solve_with_duals(ctx, active, targets, required)
    return solved.C, solved.d, solved.certified


def _individual(ctx: SolveContext, pts: ForgetPoints) -> Plan:
    """One patch per (distinct) region."""
    targets, _merged = harmonised_targets(
        ctx.target_policy,
        pts.logits,
        pts.forbidden,
        pts.active,
        max_hamming=ctx.harmonise_hamming,
        rng=ctx.rng,
    )
    solved = solve_with_duals(ctx, pts.active, targets, pts.required)
    patch_of = np.arange(len(pts), dtype=np.int64)
    return Plan(
        pts.active,
        targets,
        solved.C,
        solved.d,
        solved.certified,
        pts.required.copy(),
        patch_of,
        multipliers=solved.multipliers,
    )


def _clustered(ctx: SolveContext, pts: ForgetPoints) -> Plan:
    from sklearn.cluster import KMeans

    pending = np.arange(len(pts), dtype=np.int64)
    n_out = pts.logits.shape[1]
    rows: list[tuple[int, int, NDArray[np.float64] | None, NDArray[np.float64], float, float]] = []
    rounds = 0
    while len(pending) and rounds < ctx.max_rounds:
        rounds += 1
        k = max(1, math.ceil(len(pending) / ctx.cluster_size))
        seed = int(ctx.rng.integers(2**31 - 1))
        km = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(pts.x[pending])
        labels = km.labels_
        dist = np.linalg.norm(pts.x[pending] - km.cluster_centers_[labels], axis=1)
        clusters = [np.flatnonzero(labels == c) for c in range(k)]
        clusters = [c for c in clusters if len(c)]
        reps = np.asarray([pending[c[np.argmin(dist[c])]] for c in clusters])
        forbidden = np.stack([pts.forbidden[pending[c]].any(axis=0) for c in clusters])
        crowded = forbidden.all(axis=1)
        forbidden[crowded] = pts.forbidden[reps[crowded]]
        targets = choose_targets(ctx.target_policy, pts.logits[reps], forbidden, rng=ctx.rng)
        C, d, cert = solve_regions(ctx, pts.active[reps], targets, pts.required[reps])
        taken = np.zeros(len(pending), dtype=bool)
        for c, members in enumerate(clusters):
            C_c = None if C is None else C[c]
            ok = _certified_on(ctx, pts, pending[members], int(targets[c]), C_c, d[c])
            ok |= pending[members] == reps[c]
            for pos in np.flatnonzero(ok):
                m = int(pending[members[pos]])
                rows.append((m, int(targets[c]), C_c, d[c], float(cert[c]), float(pts.required[m])))
            taken[members[ok]] = True
        pending = pending[~taken]
    patch_of = np.full(len(pts), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        patch_of[row[0]] = i
    zero_c = np.zeros((pts.x.shape[1], n_out))
    affine = any(r[2] is not None for r in rows)
    return Plan(
        active=pts.active[[r[0] for r in rows]],
        targets=np.asarray([r[1] for r in rows], dtype=np.int64),
        C=np.stack([zero_c if r[2] is None else r[2] for r in rows]) if affine else None,
        d=np.stack([r[3] for r in rows]) if rows else np.zeros((0, n_out)),
        certified=np.asarray([r[4] for r in rows]),
        required=np.asarray([r[5] for r in rows]),
        patch_of=patch_of,
        rounds=rounds,
    )


def _certified_on(
    ctx: SolveContext,
    pts: ForgetPoints,
    members: NDArray[np.int64],
    target: int,
    C: NDArray[np.float64] | None,
    d: NDArray[np.float64],
) -> NDArray[np.bool_]:
    """Whether the patch ``(C, d)`` for ``target`` is certified on each member's own region with
    the member's required margin (and the target is allowed for the member)."""
    allowed = np.asarray(~pts.forbidden[members, target], dtype=bool)
    if not allowed.any():
        return allowed
    regions = linearize(ctx.head, pts.active[members], box=ctx.box, dense=False)
    t = torch.full((len(members),), target, dtype=torch.int64)
    C_t = None if C is None else torch.from_numpy(C).expand(len(members), *C.shape)
    d_t = torch.from_numpy(d).expand(len(members), -1)
    W, _ = spec_objectives(regions, t, C=C_t, d=d_t)
    init = backward_multipliers(regions, t) if C is None else None
    lam = LagrangianSolver().multipliers(regions, W, init=init)
    margin = -spec_upper_bounds(regions, t, lam, C=C_t, d=d_t).max(dim=1).values.numpy()
    return np.asarray(allowed & (margin >= pts.required[members]))


Strategy = Callable[[SolveContext, ForgetPoints], Plan]

STRATEGIES: dict[str, Strategy] = {"individual": _individual, "clustered": _clustered}


def plan_patches(strategy: str, ctx: SolveContext, pts: ForgetPoints) -> Plan:
    """Run ``strategy`` on the *distinct* regions of the forget points (points sharing a region
    are one unit: their labels are all forbidden as targets, the largest required margin
    applies), then map the plan back to the points."""
    first: dict[bytes, int] = {}
    region_of = np.empty(len(pts), dtype=np.int64)
    reps: list[int] = []
    for m, key in enumerate(pattern_keys(pts.active)):
        region_of[m] = first.setdefault(key, len(first))
        if region_of[m] == len(reps):
            reps.append(m)
    rep = np.asarray(reps, dtype=np.int64)
    forbidden = np.zeros((len(rep), pts.forbidden.shape[1]), dtype=bool)
    required = np.zeros(len(rep))
    np.logical_or.at(forbidden, region_of, pts.forbidden)
    np.maximum.at(required, region_of, pts.required)
    regions = ForgetPoints(pts.x[rep], pts.active[rep], pts.logits[rep], forbidden, required)
    plan = STRATEGIES[strategy](ctx, regions)
    return dataclasses.replace(plan, patch_of=plan.patch_of[region_of])
