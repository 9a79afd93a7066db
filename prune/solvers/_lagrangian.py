"""The fast default solver: a constant patch on the target logit, sized by a Lagrangian bound.

Patch: ``p(x) = delta * e_t``. It changes only the target logit, so two patches that share a
target never work against each other, and ``|p| <= delta`` everywhere (the gate constant is
``K = delta``). For every ``j != t`` the patched spec row is ``(f_j - f_t)(x) - delta``, hence

    delta = margin + max_j U_j,   U_j >= max_{x in S} (f_j - f_t)(x)

certifies the spec ``(f+p)_t - (f+p)_j >= margin`` on all of ``S``. ``U_j`` comes from weak
duality (:func:`prune.solvers._bounds.dual_bound`), which is sound for *any* multipliers
``lam >= 0``; we tighten ``lam`` with a fixed number of projected Adam steps on the dual function
(a convex, piecewise-linear function of ``lam`` with subgradient ``h - G x*(lam)``), vectorised
over a batch of regions and the rows ``j`` that can set ``delta``. The steps run in float32 on
row-normalised data (their matrix products in bfloat16 where the CPU has it); the final bound
is re-evaluated with the unnormalised constraints, in float32 plus a rigorous rounding term for
every row and in float64 for the rows that can be a region's largest, so ``delta`` is the
float64 one. Convergence only makes ``delta`` smaller (a tighter, less intrusive patch); the
certificate never depends on it.

Cost per step: one masked forward and one masked backward pass of the tightened rows through
the layers (GEMMs against the shared weights; neither the constraint matrix nor the logits'
linear part ``F1`` is formed). Compared with the exact LP (:mod:`prune.solvers._scale_shift`),
the bound is larger by a gap the benchmark records."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from prune.errors import PatchError
from prune.regions import RegionOperator, Regions
from prune.solvers._base import PatchSolution, certified_margins
from prune.solvers._bounds import box_dual

__all__ = ["LagrangianSolver", "backward_multipliers"]


GemmPrecision = Literal["auto", "float32", "bfloat16"]
_FEW_ROWS = 72
"""Up to this many spec rows (8 regions of 10 classes), the solver tightens every row in one
round and bounds them in float64: the row selection and the float32 pass save GEMM work only
on larger batches and cost fixed overhead on a one-point call."""
_ESTIMATE_NOISE = 0.03
"""Relative slack when a row's starting bound (a bfloat16 estimate) is compared with the
tightened maximum (the ascent's own float32 value): a row within it is tightened too."""


@dataclass(frozen=True)
class LagrangianSolver:
    """``steps`` projected Adam steps with learning rate ``lr`` (on normalised rows).
    ``scales``: the row norms used to normalise, ``exact`` (a Gram matrix per region) or
    ``diagonal`` (:meth:`prune.regions.RegionOperator.row_scales`, one small product per
    layer); normalisation is conditioning only, the bound is sound either way.

    ``gemm``: precision of the ascent's matrix products (its state and sums stay float32):
    ``auto`` takes bfloat16 where the CPU has native bfloat16 GEMMs (about 2.7x the float32
    throughput on the AVX512-BF16 machine), else float32. The ascent only chooses ``lam``;
    every bound that sizes a patch is evaluated afterwards in float64 with those ``lam``, so
    the precision changes tightness (measured: mean push 45.35 against 45.33 in float32 on 256
    Fashion-MNIST regions), never soundness.

    ``row_cut``: which spec rows ``j != t`` are tightened. ``delta`` is set by the largest row
    bound of a region, and rows are independent in the ascent, so a row whose bound at the
    starting multipliers is already below the region's tightened maximum cannot lower
    ``delta``: it keeps its starting multipliers. Rows whose starting bound is within
    ``row_cut`` of the region's largest are tightened first; any other row whose starting bound
    exceeds the tightened maximum (less 3 %, the estimates' noise) is then tightened too, until
    none does, so ``delta`` is the one tightening every row gives, up to that noise (measured
    on 600 Fashion-MNIST regions: mean push 48.535 against 48.529, for 72 % of the rows).
    ``row_cut=0`` tightens every row at once.

    Defaults chosen by the numbers (docs/BENCHMARKS.md, "Serving cost and speed"): on 256
    Fashion-MNIST regions, the mean push ``delta`` after 6 steps at ``lr=0.01`` (45.3) is
    below that of the former default, 10 steps at ``lr=0.03`` (46.7), for 60 % of its steps
    (``lr`` 0.03 overshoots on the normalised rows; 0.005-0.014 are within 5 % of each other).
    ``LagrangianSolver(steps=40, lr=0.03, scales="exact")`` is the tighter setting. The
    unlearning pipeline sizes its constant patches with ``steps=0`` (the bound-propagation
    start, :data:`prune.unlearn.DEFAULT_SOLVER_STEPS`): the steps only shrink ``delta``."""

    name: ClassVar[str] = "lagrangian"
    steps: int = 6
    lr: float = 0.01
    scales: Literal["exact", "diagonal"] = "diagonal"
    gemm: GemmPrecision = "auto"
    row_cut: float = 0.55

    def options(self) -> dict[str, float | int | str]:
        return {"steps": self.steps, "lr": self.lr, "scales": self.scales}

    needs_dense: ClassVar[bool] = False

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        n_out = regions.F2.shape[1]
        keep = torch.arange(n_out).expand(len(targets), -1)
        # row t is identically 0: only the O - 1 rows j != t are bounded
        keep = keep[keep != targets.view(-1, 1)].view(len(targets), n_out - 1)
        coeffs = torch.zeros(len(targets), n_out - 1, n_out, dtype=torch.float64)
        coeffs.scatter_(2, keep.unsqueeze(2), 1.0)
        coeffs.scatter_(2, targets.view(-1, 1, 1).expand(-1, n_out - 1, 1), -1.0)
        objectives = _Objectives.of(regions, coeffs)
        const = regions.F2.gather(1, keep) - regions.F2.gather(1, targets.view(-1, 1))
        lam_rows = self._tightened(
            regions, objectives, backward_multipliers(regions, targets, rows=keep)
        )
        upper = torch.full((len(targets), n_out), float("-inf"), dtype=torch.float64)
        upper = upper.scatter(1, keep, objectives.bound(regions, lam_rows, const))
        delta = margin + upper.max(dim=1).values
        if not torch.isfinite(delta).all():
            raise PatchError("the Lagrangian bound is not finite (degenerate region)")
        # The label row is >= 0 at the forget point, so delta > margin > 0 in practice; a
        # non-positive delta would mean the target already wins with the margin everywhere.
        delta = delta.clamp_min(0.0)
        d = torch.zeros_like(regions.F2)
        d.scatter_(1, targets.view(-1, 1), delta.view(-1, 1))
        at = keep.unsqueeze(2).expand(-1, -1, lam_rows.shape[2])
        lam = torch.zeros(len(targets), n_out, lam_rows.shape[2], dtype=torch.float64)
        return PatchSolution(
            C=None,
            d=d,
            certified_margin=certified_margins(upper) + delta,
            multipliers=lam.scatter(1, at, lam_rows),
        )

    def multipliers(
        self, regions: Regions, W: torch.Tensor, *, init: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Multipliers ``lam [B,R,H] >= 0`` (float64) for the objectives ``W [B,R,d]`` after
        ``steps`` projected Adam steps on the dual function (every row tightened; see
        :meth:`_ascend`). ``init`` (raw multipliers, e.g. :func:`backward_multipliers`) is the
        starting point; default 0. Products in float32 unless ``gemm="bfloat16"`` (``auto``
        means bfloat16 for :meth:`solve`'s batches only, whose tightness was measured; the
        region certificate, calibrated and clustered callers keep their float32 numbers)."""
        gemm = torch.bfloat16 if self.gemm == "bfloat16" else torch.float32
        return self._ascend(regions, W.to(torch.float32), init=init, gemm=gemm)[0]

    def gemm_dtype(self, rows: int | None = None) -> torch.dtype:
        """The dtype of the ascent's matrix products (``gemm`` resolved on this machine);
        ``auto`` keeps float32 for a batch of at most ``_FEW_ROWS`` rows, whose tiny GEMMs cost
        less than the casts around them."""
        if self.gemm == "bfloat16":
            return torch.bfloat16
        few = rows is not None and rows <= _FEW_ROWS
        if self.gemm == "auto" and _native_bfloat16() and not few:
            return torch.bfloat16
        return torch.float32

    def _tightened(self, regions: Regions, obj: _Objectives, init: torch.Tensor) -> torch.Tensor:
        """Multipliers ``[B,R,H]`` (float64) for every row: tightened from ``init`` where that can
        lower the region's largest bound (``row_cut``), ``init`` elsewhere. Without ascent steps
        every row keeps ``init`` (projected onto ``lam >= 0``): the rounds would only evaluate
        the dual at ``init``, which :meth:`_Objectives.bound` does anyway."""
        if self.steps == 0:
            return init.clamp_min(0.0)
        if init.shape[0] * init.shape[1] <= _FEW_ROWS:
            # a few regions (one point per call): one round over every row costs less than
            # the estimate and the extra rounds would
            gemm = self.gemm_dtype(init.shape[0] * init.shape[1])
            W = obj.inputs(regions, gemm=gemm)
            return self._ascend(regions, W, init=init, gemm=gemm)[0]
        gemm = self.gemm_dtype()
        lam = init.clone()
        start = obj.estimate(regions, lam, gemm=gemm)
        top = start.max(dim=1, keepdim=True).values
        todo = start >= top - (1.0 - self.row_cut) * top.abs()
        done = torch.zeros_like(todo)
        tightened = torch.full_like(start, float("-inf"))
        while bool(todo.any()):
            b, r = todo.nonzero(as_tuple=True)
            rows = regions.select(b.numpy())
            lam_br, value = self._ascend(
                rows,
                obj.input_rows(regions, b, r, gemm=gemm),
                init=lam[b, r].unsqueeze(1),
                gemm=gemm,
            )
            lam[b, r] = lam_br[:, 0]
            tightened[b, r] = value[:, 0]
            done |= todo
            reached = tightened.max(dim=1, keepdim=True).values
            todo = ~done & (start > reached - _ESTIMATE_NOISE * reached.abs())
        return lam

    def _ascend(
        self,
        regions: Regions,
        W: torch.Tensor,
        *,
        init: torch.Tensor | None,
        gemm: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Multipliers ``lam [B,R,H] >= 0`` (float64) for the float32 objectives ``W [B,R,d]``
        and the best dual value seen (float64, ``[B,R]``, the bound without the objectives'
        constants, in float32 arithmetic: a guide, not a certified bound). Projected Adam in
        float32 (products in ``gemm``, default :meth:`gemm_dtype`), with the constraint rows
        and objectives scaled to unit norm (conditioning only: the returned ``lam`` is rescaled
        to the raw rows). ``G`` is never formed: each step is one masked forward and one masked backward
        pass through the layers (:class:`prune.regions.RegionOperator`). The dual value is
        tracked every ``track`` steps and at the end (the kept multipliers are the best seen;
        any of them is sound)."""
        box = regions.box
        op = regions.operator(torch.float32)
        norms = op.row_scales() if self.scales == "diagonal" else op.row_norms()
        gemm = gemm or self.gemm_dtype(W.shape[0] * W.shape[1])
        if gemm != torch.float32:
            op = regions.operator(torch.float32, gemm=gemm)
        g_norm = norms.clamp_min(1e-12).unsqueeze(1)  # [B, 1, H]
        w_norm = W.norm(dim=2, keepdim=True).clamp_min(1e-12)  # [B, R, 1]
        # signed row scales: lam G_norm = (lam * -s / |G|) A, G_norm x = (A x) * -s / |G|
        scale = -op.sign.unsqueeze(1) / g_norm
        h32 = regions.h.to(torch.float32).unsqueeze(1) / g_norm
        w32 = W / w_norm
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
        return raw, best.to(torch.float64) * w_norm.squeeze(2).to(torch.float64)


@dataclass(frozen=True, eq=False)
class _Objectives:
    """The rows ``W [B,R,d]`` the solver bounds over each region: given in input space, or (a
    head with hidden layers) as multiplier-space rows ``top [B,R,H]`` with
    ``W = op.linear_transpose(top)`` (:meth:`prune.regions.Regions.objective_multipliers`),
    so that ``W - lam G`` is one backward pass and ``W`` is never formed in float64."""

    W: torch.Tensor | None
    top: torch.Tensor | None

    @staticmethod
    def of(regions: Regions, coeffs: torch.Tensor) -> _Objectives:
        """The objectives ``coeffs F1`` (``coeffs [B,R,O]``)."""
        if regions.hidden:
            return _Objectives(W=None, top=regions.objective_multipliers(coeffs))
        return _Objectives(W=coeffs @ regions.F1, top=None)

    def residual(self, op: RegionOperator, lam: torch.Tensor) -> torch.Tensor:
        """``W - lam G`` in ``op``'s precision (``lam [B,R,H]`` in its dtype)."""
        if self.top is not None:
            return op.linear_transpose(self.top.to(lam.dtype) + lam * op.sign.unsqueeze(1))
        assert self.W is not None
        return self.W.to(lam.dtype) - op.apply_transpose(lam)

    def bound(
        self, regions: Regions, lam: torch.Tensor, const: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sound upper bounds ``[B,R]`` of ``max_{x in S} W.x + const`` (weak duality, as
        :func:`prune.solvers._bounds.dual_bound`; negative ``lam`` count as 0), equal to the
        float64 evaluation on every row that can be a region's largest.

        With ``top``, every row is first bounded in float32 (:meth:`_float32_bound`: value and
        rigorous error); a row whose float32 upper bound exceeds the largest float32 *lower*
        bound of its region may be that region's largest and is evaluated again in float64;
        the others keep their float32 upper bound, which is sound and not above the region's
        largest exact bound, so a patch sized by the maximum is as tight as in float64."""
        lam = lam.to(torch.float64).clamp_min(0.0)
        const = torch.zeros(lam.shape[:2], dtype=torch.float64) if const is None else const
        if self.top is None:
            r = self.residual(regions.operator(torch.float64), lam)
            return box_dual(r, lam, regions.h, regions.box) + const
        mu = self.top + lam * regions.sign.unsqueeze(1)
        if lam.shape[0] * lam.shape[1] <= _FEW_ROWS:  # float64 throughout: cheaper for a few rows
            r = regions.operator(torch.float64).linear_transpose(mu)
            return box_dual(r, lam, regions.h, regions.box) + const
        value, error = _float32_bound(regions, mu, lam)
        value = value + const
        upper = value + error
        b, r = (upper > (value - error).max(dim=1, keepdim=True).values).nonzero(as_tuple=True)
        rows = regions.select(b.numpy())
        residual = rows.operator(torch.float64).linear_transpose(mu[b, r].unsqueeze(1))
        exact = box_dual(residual, lam[b, r].unsqueeze(1), rows.h, rows.box)[:, 0]
        upper[b, r] = exact + const[b, r]
        return upper

    def estimate(self, regions: Regions, lam: torch.Tensor, *, gemm: torch.dtype) -> torch.Tensor:
        """:meth:`bound` in float32 with ``gemm`` products: an estimate that only steers which
        rows are tightened."""
        lam32 = lam.to(torch.float32).clamp_min(0.0)
        r = self.residual(regions.operator(torch.float32, gemm=gemm), lam32)
        return box_dual(r, lam32, regions.h.to(torch.float32), regions.box).to(torch.float64)

    def inputs(self, regions: Regions, *, gemm: torch.dtype) -> torch.Tensor:
        """Every row of ``W`` ``[B, R, d]`` in float32 (through ``gemm`` products)."""
        if self.W is not None:
            return self.W.to(torch.float32)
        assert self.top is not None
        op = regions.operator(torch.float32, gemm=gemm)
        return op.linear_transpose(self.top.to(torch.float32))

    def input_rows(
        self, regions: Regions, b: torch.Tensor, r: torch.Tensor, *, gemm: torch.dtype
    ) -> torch.Tensor:
        """``W[b, r]`` as ``[N, 1, d]`` float32 (row ``n`` on the region ``b[n]``), through
        ``gemm`` products (the ascent's objectives: tightness only)."""
        if self.W is not None:
            return self.W[b, r].to(torch.float32).unsqueeze(1)
        assert self.top is not None
        op = regions.select(b.numpy()).operator(torch.float32, gemm=gemm)
        return op.linear_transpose(self.top[b, r].to(torch.float32).unsqueeze(1))


def _float32_bound(
    regions: Regions, mu: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak-duality bound ``max_box (W - lam G).x + lam.h`` ``[B,R]`` with the residual
    ``r = op.linear_transpose(mu)`` (``mu [B,R,H]`` float64) computed in float32, and a rigorous
    bound on what that rounding can change: every product is a float32 sum of ``n`` float32
    products (error ``<= gamma_n`` times the same sum of absolute values, in any order);
    ``mu``, the weights and the masks are rounded to float32 once each and every mask product
    and addition once more, so ``|fl(r)_i - r_i| <= gamma_K (|mu| |A|)_i`` with
    ``K = 2 + sum_l (n_l + 4)``, ``n_l`` at least layer ``l``'s inner dimension
    (:meth:`prune.regions.RegionOperator.transpose_mass`: a float32 sum of non-negative terms,
    at least ``(1 - gamma_K)`` times the exact one by the same count, so it is divided by that
    and taken 1 % larger).
    The box maximum moves by at most ``(|mid| + radius) sum_i |fl(r)_i - r_i|``. The remaining
    sums are float64 (relative ~1e-15, inside the pipeline's float32 slack, as for
    :func:`prune.solvers._bounds.dual_bound`). Returns ``(value, error)``."""
    op = regions.operator(torch.float32)
    r = op.linear_transpose(mu.to(torch.float32)).to(torch.float64)
    # the backward pass's inner dimension is a layer's output width; max() covers either
    k = 2 + sum(max(int(w.shape[0]), int(w.shape[1])) + 4 for w in regions.hidden)
    unit = 2.0**-24
    if k * unit >= 0.25:
        raise PatchError(f"a float32 sum of {k} terms has no useful error bound")
    gamma = k * unit / (1.0 - k * unit)
    mass = op.transpose_mass(mu.abs().to(torch.float32)).to(torch.float64) * 1.01 / (1.0 - gamma)
    box = regions.box
    return box_dual(r, lam, regions.h, box), gamma * (abs(box.mid) + box.radius) * mass


@functools.cache
def _native_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 GEMMs natively through oneDNN (else they are emulated
    and slower than float32; False in a build without oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def backward_multipliers(
    regions: Regions, targets: torch.Tensor, *, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """A starting point for the spec rows of the *unpatched* head, by one backward pass:
    ``[B, O, H]`` for every class ``j``, or ``[B, R, H]`` for the classes ``rows [B, R]``.

    On the region, ``f_j - f_t = v . z_L`` with ``v = (W_out[j] - W_out[t]) * m_L`` on the last
    pre-activations. An active neuron's row is ``G_k = -A_k``, so ``lam_k = max(0, -a_k)``
    cancels the negative part of each coefficient ``a_k``; the positive part is pushed to the
    layer below through ``W_l`` and the masks, and so on down to the input, where the box takes
    what is left. This is the multiplier choice of simple bound propagation; Adam then improves
    on it. Any ``lam >= 0`` is sound, so this only changes how fast the bound gets tight."""
    # float32 arithmetic: these are only a starting point (any lam >= 0 is sound)
    weights = [w.to(torch.float32) for w in regions.hidden]
    sizes = [w.shape[0] for w in weights]
    readout = regions.readout.to(torch.float32)
    chosen = readout.unsqueeze(0) if rows is None else readout[rows]  # [B or 1, R, H_last]
    if not sizes:
        return torch.zeros(len(regions), chosen.shape[1], 0, dtype=torch.float64)
    masks = torch.split(regions.masks(torch.float32), sizes, dim=1)
    v = chosen - readout[targets].unsqueeze(1)  # [B, R, H_last]
    parts: list[torch.Tensor] = []
    for layer in range(len(sizes) - 1, -1, -1):
        a = v * masks[layer].unsqueeze(1)
        parts.append((-a).clamp_min(0.0))
        if layer > 0:
            v = a.clamp_min(0.0) @ weights[layer]
    return torch.cat(parts[::-1], dim=2).to(torch.float64)
