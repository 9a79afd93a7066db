"""What every patch solver returns, and the shared post-processing (certified margins)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from prune.regions import Regions

__all__ = ["PatchSolution", "Solver", "certified_margins"]


@dataclass(frozen=True, eq=False)
class PatchSolution:
    """Affine patches ``p_b(x) = x C[b] + d[b]`` for ``B`` regions (float64 tensors).

    ``C`` is ``[B, d, O]`` or ``None`` (all patches constant), ``d`` is ``[B, O]``.
    ``certified_margin[b]`` is a sound lower bound of
    ``min_{x in S_b} (f+p)_t(x) - max_{j != t} (f+p)_j(x)`` in exact arithmetic (see
    :mod:`prune.solvers._bounds`); the solver guarantees it is ``>= margin`` or raises."""

    C: torch.Tensor | None
    d: torch.Tensor
    certified_margin: torch.Tensor
    multipliers: torch.Tensor | None = None
    """``[B, O, H]``: multipliers ``lam >= 0`` of each spec row ``j`` (row ``t`` is 0) whose
    weak-duality bounds give ``certified_margin`` for the *unpatched* objectives (a constant
    patch moves only the constants), or None when the solver keeps none. The region
    certificate (:func:`prune.proofs.region_duals`) ships them instead of solving again."""

    def __len__(self) -> int:
        return int(self.d.shape[0])


class Solver(Protocol):
    """A patch solver: for each region and target, an affine patch under which the head predicts
    the target with at least ``margin`` over the *whole* region. Solvers are frozen dataclasses
    holding their options; ``name`` is the registry key written into certificates."""

    name: ClassVar[str]
    needs_dense: ClassVar[bool]
    """Whether the solver needs the explicit constraint rows (``linearize(dense=True)``)."""

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        """``targets [B]``; ``margin [B]`` is the certified margin each region must get."""
        ...

    def options(self) -> dict[str, float | int | str]:
        """JSON-able solver options, recorded in the method parameters."""
        ...


def certified_margins(upper: torch.Tensor) -> torch.Tensor:
    """From sound upper bounds ``U [B,O]`` of ``(f+p)_j - (f+p)_t`` (``-inf`` at ``t``) to the
    certified margin ``min_j -U_j``."""
    return -upper.max(dim=1).values
