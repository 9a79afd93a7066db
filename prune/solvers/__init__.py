"""Patch solvers, all certified over the whole linear region (DESIGN.md §3.3).

Registry ``SOLVERS`` (name -> solver class):

* ``lagrangian`` (default): constant patch on the target logit sized by a weak-duality bound
  tightened by projected subgradient steps; vectorised, milliseconds per region;
* ``scale-shift``: the PRUNE reference code's per-spec-row scale/shift, two exact LPs per row;
* ``reassure``: REASSURE's minimal L-inf affine patch, one large LP per region.

Every solver's certified margin is the same sound weak-duality bound
(:mod:`prune.solvers._bounds`), so they are comparable and independently checkable."""

from __future__ import annotations

from prune.errors import PatchError
from prune.solvers._base import PatchSolution, Solver
from prune.solvers._bounds import (
    dense_dual_bound,
    dual_bound,
    spec_objectives,
    spec_upper_bounds,
)
from prune.solvers._lagrangian import LagrangianSolver
from prune.solvers._reassure import ReassureSolver
from prune.solvers._scale_shift import ScaleShiftSolver

__all__ = [
    "MAX_STEPS",
    "SOLVERS",
    "LagrangianSolver",
    "PatchSolution",
    "ReassureSolver",
    "ScaleShiftSolver",
    "Solver",
    "dense_dual_bound",
    "dual_bound",
    "make_solver",
    "spec_objectives",
    "spec_upper_bounds",
]

# More ascent steps than this only cost time: the bound changes by well under a logit after 40.
MAX_STEPS = 1000

SOLVERS: dict[str, type[LagrangianSolver] | type[ScaleShiftSolver] | type[ReassureSolver]] = {
    LagrangianSolver.name: LagrangianSolver,
    ScaleShiftSolver.name: ScaleShiftSolver,
    ReassureSolver.name: ReassureSolver,
}


def make_solver(name: str, *, steps: int | None = None) -> Solver:
    """The solver registered under ``name``, with its default options except ``steps`` (the
    lagrangian solver's dual-ascent steps; the other solvers have none)."""
    try:
        kind = SOLVERS[name]
    except KeyError:
        raise PatchError(f"unknown solver {name!r} (choose {', '.join(SOLVERS)})") from None
    if steps is None:
        return kind()
    if name != LagrangianSolver.name:
        raise PatchError(f"--solver-steps applies to the lagrangian solver only, not {name!r}")
    if not 0 <= steps <= MAX_STEPS:
        raise PatchError(f"the solver steps must be between 0 and {MAX_STEPS}, got {steps}")
    return kind(steps=steps)  # type: ignore[call-arg]  # the lagrangian entry takes steps
