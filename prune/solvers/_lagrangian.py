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

Cost per step: two batched matmuls of ``B x O x H x d``. Compared with the exact LP
(:mod:`prune.solvers._scale_shift`), the bound is larger by a gap the benchmark records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prune.errors import PatchError
from prune.regions import Regions
from prune.solvers._base import PatchSolution, certified_margins
from prune.solvers._bounds import dual_bound, spec_objectives

__all__ = ["LagrangianSolver"]


@dataclass(frozen=True)
class LagrangianSolver:
    """``steps`` projected Adam steps with learning rate ``lr`` (on normalised rows)."""

    name: ClassVar[str] = "lagrangian"
    steps: int = 60
    lr: float = 0.03

    def options(self) -> dict[str, float | int | str]:
        return {"steps": self.steps, "lr": self.lr}

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        G, h = regions.constraints()
        W, const = spec_objectives(regions, targets)
        lam = self.multipliers(G, h, W, regions)
        upper = dual_bound(G, h, regions.box, W, lam) + const
        upper = upper.scatter(1, targets.view(-1, 1), float("-inf"))
        delta = margin + upper.max(dim=1).values
        if not torch.isfinite(delta).all():
            raise PatchError("the Lagrangian bound is not finite (degenerate region)")
        # The label row is >= 0 at the forget point, so delta > margin > 0 in practice; a
        # non-positive delta would mean the target already wins with the margin everywhere.
        delta = delta.clamp_min(0.0)
        d = torch.zeros_like(regions.F2)
        d.scatter_(1, targets.view(-1, 1), delta.view(-1, 1))
        return PatchSolution(C=None, d=d, certified_margin=certified_margins(upper) + delta)

    def multipliers(
        self, G: torch.Tensor, h: torch.Tensor, W: torch.Tensor, regions: Regions
    ) -> torch.Tensor:
        """Multipliers ``lam [B,O,H] >= 0`` (float64) after ``steps`` projected Adam steps.

        The first ``regions.shared`` rows of every region are the first layer's weights up to a
        sign, so their products run as one GEMM against the shared matrix (``[B*O, H1] x
        [H1, d]``) instead of per-region slabs: half the memory traffic of the step."""
        box = regions.box
        k1 = regions.shared
        g_norm = G.norm(dim=2, keepdim=True).clamp_min(1e-12)
        w_norm = W.norm(dim=2, keepdim=True).clamp_min(1e-12)
        batch, rows = W.shape[0], W.shape[1]
        w1 = (regions.A[0, :k1] / g_norm[0, :k1]).to(torch.float32)  # [H1, d], unit rows
        s1 = -regions.sign[:, :k1].to(torch.float32).unsqueeze(1)  # G1 = s1 * w1, [B, 1, H1]
        g2 = (G[:, k1:] / g_norm[:, k1:]).to(torch.float32)
        g2_t = g2.transpose(1, 2)
        h32 = (h / g_norm.squeeze(2)).to(torch.float32).unsqueeze(1)
        w32 = (W / w_norm).to(torch.float32)
        lam = torch.zeros(batch, rows, G.shape[1], dtype=torch.float32)
        best_lam = lam.clone()
        best = torch.full(W.shape[:2], float("inf"))
        m1 = torch.zeros_like(lam)
        m2 = torch.zeros_like(lam)
        beta1, beta2 = 0.9, 0.999
        for k in range(1, self.steps + 1):
            first = ((lam[:, :, :k1] * s1).reshape(batch * rows, k1) @ w1).reshape(batch, rows, -1)
            r = w32 - first - torch.bmm(lam[:, :, k1:], g2)
            value = (
                r.sum(dim=2) * box.mid + r.abs().sum(dim=2) * box.radius + (lam * h32).sum(dim=2)
            )
            better = value < best
            best = torch.where(better, value, best)
            best_lam = torch.where(better.unsqueeze(2), lam, best_lam)
            x_star = box.mid + box.radius * torch.sign(r)
            gx1 = (x_star.reshape(batch * rows, -1) @ w1.T).reshape(batch, rows, k1) * s1
            grad = h32 - torch.cat([gx1, torch.bmm(x_star, g2_t)], dim=2)
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = (m1 / (1 - beta1**k)) / ((m2 / (1 - beta2**k)).sqrt() + 1e-8)
            lam.sub_(self.lr * step).clamp_(min=0.0)
        # undo the normalisation: lam_raw_k = lam_k * |w_j| / |G_k|
        raw: torch.Tensor = best_lam.to(torch.float64) * w_norm / g_norm.transpose(1, 2)
        return raw
