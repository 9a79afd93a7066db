"""The fast default solver: a constant patch on the target logit, sized by a Lagrangian bound.

Patch: ``p(x) = delta * e_t``. It changes only the target logit, so two patches that share a
target never work against each other, and ``|p| <= delta`` everywhere (the gate constant is
``K = delta``). For every ``j != t`` the patched spec row is ``(f_j - f_t)(x) - delta``, hence

    delta = margin + max_j U_j,   U_j >= max_{x in S} (f_j - f_t)(x)

certifies the spec ``(f+p)_t - (f+p)_j >= margin`` on all of ``S``. ``U_j`` comes from weak
duality (:func:`prune.solvers._bounds.dual_bound`), which is sound for *any* multipliers
``lam >= 0``; we tighten ``lam`` with a fixed number of projected Adam steps on the dual function
(a convex, piecewise-linear function of ``lam`` with subgradient ``h - G x*(lam)``), vectorised
over a batch of regions and all rows ``j``. The steps run in float32 on row-normalised data; the
final bound is re-evaluated in float64 with the unnormalised constraints. Convergence only makes
``delta`` smaller (a tighter, less intrusive patch); the certificate never depends on it.

Cost per step: one masked forward and one masked backward pass of ``B x O`` vectors through
the layers (GEMMs against the shared weights; the constraint matrix is never formed). Compared with the exact LP
(:mod:`prune.solvers._scale_shift`), the bound is larger by a gap the benchmark records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from prune.errors import PatchError
from prune.regions import Regions
from prune.solvers._base import PatchSolution, certified_margins
from prune.solvers._bounds import dual_bound, spec_objectives

__all__ = ["LagrangianSolver", "backward_multipliers"]


@dataclass(frozen=True)
class LagrangianSolver:
    """``steps`` projected Adam steps with learning rate ``lr`` (on normalised rows).
    ``scales``: the row norms used to normalise, ``exact`` (a Gram matrix per region) or
    ``diagonal`` (:meth:`prune.regions.RegionOperator.row_scales`, one small product per
    layer); normalisation is conditioning only, the bound is sound either way.

    Defaults chosen by the numbers (docs/BENCHMARKS.md, "Serving cost and speed"): on 256
    Fashion-MNIST regions, the mean push ``delta`` after 6 steps at ``lr=0.01`` (45.3) is
    below that of the former default, 10 steps at ``lr=0.03`` (46.7), for 60 % of its steps
    (``lr`` 0.03 overshoots on the normalised rows; 0.005-0.014 are within 5 % of each other).
    ``LagrangianSolver(steps=40, lr=0.03, scales="exact")`` is the tighter setting."""

    name: ClassVar[str] = "lagrangian"
    steps: int = 6
    lr: float = 0.01
    scales: Literal["exact", "diagonal"] = "diagonal"

    def options(self) -> dict[str, float | int | str]:
        return {"steps": self.steps, "lr": self.lr, "scales": self.scales}

    needs_dense: ClassVar[bool] = False

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        W, const = spec_objectives(regions, targets)
        init = backward_multipliers(regions, targets)
        # row t is identically 0: only the O - 1 rows j != t are tightened
        n_out = W.shape[1]
        keep = torch.arange(n_out).expand(len(targets), -1)
        keep = keep[keep != targets.view(-1, 1)].view(len(targets), n_out - 1)
        w_rows = W.gather(1, keep.unsqueeze(2).expand(-1, -1, W.shape[2]))
        at = keep.unsqueeze(2).expand(-1, -1, init.shape[2])
        lam_rows = self.multipliers(regions, w_rows, init=init.gather(1, at))
        lam = torch.zeros_like(init).scatter(1, at, lam_rows)
        upper = torch.full_like(const, float("-inf"))
        upper = upper.scatter(
            1, keep, dual_bound(regions, w_rows, lam_rows) + const.gather(1, keep)
        )
        delta = margin + upper.max(dim=1).values
        if not torch.isfinite(delta).all():
            raise PatchError("the Lagrangian bound is not finite (degenerate region)")
        # The label row is >= 0 at the forget point, so delta > margin > 0 in practice; a
        # non-positive delta would mean the target already wins with the margin everywhere.
        delta = delta.clamp_min(0.0)
        d = torch.zeros_like(regions.F2)
        d.scatter_(1, targets.view(-1, 1), delta.view(-1, 1))
        return PatchSolution(
            C=None, d=d, certified_margin=certified_margins(upper) + delta, multipliers=lam
        )

    def multipliers(
        self, regions: Regions, W: torch.Tensor, *, init: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Multipliers ``lam [B,R,H] >= 0`` (float64) for the objectives ``W [B,R,d]`` after
        ``steps`` projected Adam steps on the dual function, in float32, with the constraint
        rows and objectives scaled to unit norm (conditioning only: the returned ``lam`` is
        rescaled to the raw rows). ``G`` is never formed: each step is one masked forward and
        one masked backward pass through the layers (:class:`prune.regions.RegionOperator`).
        The dual value is tracked every ``track`` steps and at the end (the kept multipliers
        are the best seen; any of them is sound). ``init`` (raw multipliers, e.g.
        :func:`backward_multipliers`) is the starting point; default 0."""
        box = regions.box
        op = regions.operator(torch.float32)
        norms = op.row_scales() if self.scales == "diagonal" else op.row_norms()
        g_norm = norms.clamp_min(1e-12).unsqueeze(1)  # [B, 1, H]
        w_norm = W.norm(dim=2, keepdim=True).clamp_min(1e-12)  # [B, R, 1]
        # signed row scales: lam G_norm = (lam * -s / |G|) A, G_norm x = (A x) * -s / |G|
        scale = -op.sign.unsqueeze(1) / g_norm
        h32 = regions.h.to(torch.float32).unsqueeze(1) / g_norm
        w32 = (W / w_norm).to(torch.float32)
        if init is None:
            lam = torch.zeros(W.shape[0], W.shape[1], regions.active.shape[1])
        else:
            lam = (init * g_norm.to(torch.float64) / w_norm).to(torch.float32).clamp_min(0.0)
        best_lam = lam.clone()
        best = torch.full(W.shape[:2], float("inf"))
        m1 = torch.zeros_like(lam)
        m2 = torch.zeros_like(lam)
        beta1, beta2, track = 0.9, 0.999, 5
        for k in range(1, self.steps + 2):
            r = w32 - op.linear_transpose(lam * scale)
            if k % track == 1 or k == self.steps + 1:
                value = (r * box.mid + r.abs() * box.radius).sum(dim=2) + (lam * h32).sum(dim=2)
                better = value < best
                best = torch.where(better, value, best)
                best_lam = torch.where(better.unsqueeze(2), lam, best_lam)
            if k == self.steps + 1:
                break
            grad = h32 - op.linear(torch.sign(r).mul_(box.radius).add_(box.mid)) * scale
            m1.lerp_(grad, 1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = m2.mul(1 / (1 - beta2**k)).sqrt_().add_(1e-8)
            lam.addcdiv_(m1, denom, value=-self.lr / (1 - beta1**k)).clamp_(min=0.0)
        # undo the normalisation: lam_raw_k = lam_k * |w_j| / |G_k|
        raw: torch.Tensor = best_lam.to(torch.float64) * w_norm / g_norm.to(torch.float64)
        return raw


def backward_multipliers(regions: Regions, targets: torch.Tensor) -> torch.Tensor:
    """A starting point for the spec rows of the *unpatched* head, by one backward pass.

    On the region, ``f_j - f_t = v . z_L`` with ``v = (W_out[j] - W_out[t]) * m_L`` on the last
    pre-activations. An active neuron's row is ``G_k = -A_k``, so ``lam_k = max(0, -a_k)``
    cancels the negative part of each coefficient ``a_k``; the positive part is pushed to the
    layer below through ``W_l`` and the masks, and so on down to the input, where the box takes
    what is left. This is the multiplier choice of simple bound propagation; Adam then improves
    on it. Any ``lam >= 0`` is sound, so this only changes how fast the bound gets tight."""
    op = regions.operator(torch.float64)
    sizes = [w.shape[0] for w in op.weights]
    if not sizes:
        return torch.zeros(len(regions), regions.readout.shape[0], 0, dtype=torch.float64)
    masks = torch.split(regions.masks(torch.float64), sizes, dim=1)
    readout = regions.readout
    v = readout.unsqueeze(0) - readout[targets].unsqueeze(1)  # [B, O, H_last]
    parts: list[torch.Tensor] = []
    for layer in range(len(sizes) - 1, -1, -1):
        a = v * masks[layer].unsqueeze(1)
        parts.append((-a).clamp_min(0.0))
        if layer > 0:
            v = a.clamp_min(0.0) @ op.weights[layer]
    return torch.cat(parts[::-1], dim=2)
