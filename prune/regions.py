"""Linear regions of the PL head (DESIGN.md §3.1).

The region of a cut value ``x0`` is fixed by its activation pattern ``sigma`` (``True`` where the
hidden pre-activation ``z_k(x0) >= 0``):

    S(sigma) = { x in box : z_k(x) >= 0 where sigma_k, z_k(x) <= 0 elsewhere }.

On ``S`` the pre-activations are affine, ``z = A x + c``, and so are the logits,
``f(x) = F1 x + F2``; both are obtained by propagating the layers with the activation masks fixed
by ``sigma``: 1 on active units, the unit's negative-side slope on inactive ones (0 for Relu,
``alpha`` for LeakyRelu, the slope for PRelu), so every activation is linear on ``S``. In constraint form ``S = { x in box : G x <= h }`` with ``G = -s*A``, ``h = s*c`` and
``s = +1`` on active neurons, ``-1`` on inactive ones (one row per hidden neuron, in the order of
the ``prune.hidden`` tensors). Linearisation depends only on the pattern, never on the point, so
regions are keyed by pattern and rebuilt from it when needed.

The input box is declared, not inferred at verification time: for input-space cuts it is the data
range (``[0, 1]`` for the bundled data sets), for feature-space cuts
``[min(0, 1.1 * min), 1.1 * max]`` over the training features. Certificates hold on ``S``, which
is inside the box."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prune.errors import DataError
from prune.model import PLHead

__all__ = [
    "InputBox",
    "RegionOperator",
    "Regions",
    "box_from_data",
    "linearize",
    "pattern_keys",
    "patterns_of",
]

Array = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class InputBox:
    """Scalar bounds ``low <= x_i <= high`` for every coordinate of the cut tensor; ``source``
    says how they were declared (``data-range`` or ``feature-range`` from the training data,
    ``declared`` when the owner gave them: ``prune unlearn --box``)."""

    low: float
    high: float
    source: str

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low < self.high):
            raise DataError(f"invalid input box [{self.low}, {self.high}]")
        if max(abs(self.low), abs(self.high)) > float(np.finfo(np.float32).max):
            raise DataError(
                f"input box [{self.low:g}, {self.high:g}] reaches beyond float32's range "
                "(the cut values are float32)"
            )

    @property
    def mid(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def radius(self) -> float:
        return 0.5 * (self.high - self.low)

    def as_method(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "source": self.source}

    def contains(self, x: NDArray[Any]) -> NDArray[np.bool_]:
        """Per row: every coordinate inside the box."""
        return np.asarray(((x >= self.low) & (x <= self.high)).all(axis=1))


def box_from_data(x_cut: NDArray[Any], *, input_space: bool) -> InputBox:
    """Declare the box from training cut values (see the module docstring)."""
    lo, hi = float(np.min(x_cut)), float(np.max(x_cut))
    if input_space:
        return InputBox(low=min(0.0, lo), high=max(1.0, hi), source="data-range")
    span_hi = 1.1 * hi if hi > 0 else 0.1 * abs(hi) + 1.0
    return InputBox(low=min(0.0, 1.1 * lo), high=max(span_hi, 1e-6), source="feature-range")


def patterns_of(head: PLHead, x: NDArray[Any]) -> BoolArray:
    """Activation patterns ``[N, H]`` of cut values ``x`` computed in float64 (so that ``x``
    lies in its own region in exact arithmetic up to float64 rounding)."""
    _, z = head.forward(np.asarray(x, dtype=np.float64))
    return np.asarray(z >= 0.0)


def pattern_keys(active: BoolArray) -> list[bytes]:
    """A hashable key per pattern (packed bits): equal keys <=> identical regions."""
    packed = np.packbits(active, axis=1)
    return [row.tobytes() for row in packed]


@dataclass(frozen=True, eq=False)
class RegionOperator:
    """The constraint matrix ``G`` of a batch of regions as a linear operator, applied through
    the layers with the ReLU masks fixed (never materialised): ``G x = -s * (A x)`` is a masked
    forward pass, ``lam G`` a masked backward pass. Every product is a GEMM against a weight
    matrix shared by all regions, in the weights' dtype; the operands' dtype is the precision of
    everything else (masks, sums), so weights in a lower precision than ``x`` make only the GEMMs
    cheaper (:meth:`Regions.operator`, ``gemm``)."""

    weights: tuple[torch.Tensor, ...]
    masks: tuple[torch.Tensor, ...]
    sign: torch.Tensor
    input_dim: int
    identity: tuple[bool, ...] = ()
    """Per layer: its weight is exactly the identity (a cut at an activation's input: the
    first layer is ``I``), so its product is skipped; the same values, none of the
    ``H x H`` GEMM that dominated the ResNet-20 benchmark's solve."""

    def _times(self, i: int, u: torch.Tensor, *, transpose: bool) -> torch.Tensor:
        if self.identity and self.identity[i]:
            return u
        w = self.weights[i] if transpose else self.weights[i].T
        if w.dtype == u.dtype:
            return u @ w
        # GEMM in the weights' (lower) precision, everything around it in ``u``'s
        return (u.to(w.dtype) @ w).to(u.dtype)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` (the linearised pre-activations without offsets) for ``x [B, R, d]``."""
        if not self.weights:
            return x.new_zeros(*x.shape[:2], 0)
        outs: list[torch.Tensor] = []
        u = x
        for i in range(len(self.weights)):
            u = self._times(i, u if i == 0 else u * self.masks[i - 1].unsqueeze(1), transpose=False)
            outs.append(u)
        return torch.cat(outs, dim=2)

    def linear_transpose(self, mu: torch.Tensor) -> torch.Tensor:
        """``mu A`` for ``mu [B, R, H]``: a backward pass with the masks fixed."""
        if not self.weights:
            return mu.new_zeros(*mu.shape[:2], self.input_dim)
        parts = torch.split(mu, [w.shape[0] for w in self.weights], dim=2)
        acc = parts[-1]
        for i in range(len(self.weights) - 1, 0, -1):
            acc = self._times(i, acc, transpose=True) * self.masks[i - 1].unsqueeze(1)
            acc = acc + parts[i - 1]
        return self._times(0, acc, transpose=True)

    def transpose_mass(self, a: torch.Tensor) -> torch.Tensor:
        """``sum_i (a |A|)_i`` for ``a [B, R, H] >= 0``, ``[B, R]``: :meth:`linear_transpose`
        with absolute weights and masks, summed over the input; the first layer's product is
        its row sums, so only the hidden layers' products are paid. (A rounding-error scale.)"""
        if not self.weights:
            return a.new_zeros(a.shape[:2])
        parts = torch.split(a, [w.shape[0] for w in self.weights], dim=2)
        acc = parts[-1]
        for i in range(len(self.weights) - 1, 0, -1):
            if not (self.identity and self.identity[i]):
                acc = acc @ self.weights[i].abs().to(acc.dtype)
            acc = acc * self.masks[i - 1].abs().unsqueeze(1) + parts[i - 1]
        if self.identity and self.identity[0]:
            return acc.sum(dim=2)
        return acc @ self.weights[0].abs().sum(dim=1).to(acc.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``G x = -s * (A x)`` for ``x [B, R, d]``: ``[B, R, H]``."""
        return self.linear(x) * -self.sign.unsqueeze(1)

    def apply_transpose(self, lam: torch.Tensor) -> torch.Tensor:
        """``lam G`` for ``lam [B, R, H]``: ``[B, R, d]``."""
        return self.linear_transpose(lam * -self.sign.unsqueeze(1))

    def row_norms(self) -> torch.Tensor:
        """``|G_k|`` per region and row, ``[B, H]``, through Gram matrices of the layers."""
        batch = self.sign.shape[0]
        if not self.weights:
            return self.sign.new_zeros(batch, 0)
        w1 = self.weights[0]
        norms = [w1.norm(dim=1).expand(batch, -1)]
        gram = (w1 @ w1.T).expand(batch, -1, -1)
        for i in range(1, len(self.weights)):
            p = self.weights[i].unsqueeze(0) * self.masks[i - 1].unsqueeze(1)
            q = p @ gram
            norms.append((q * p).sum(dim=2).clamp_min(0.0).sqrt())
            if i + 1 < len(self.weights):
                gram = q @ p.transpose(1, 2)
        return torch.cat(norms, dim=1)

    def row_scales(self) -> torch.Tensor:
        """Cheap positive stand-ins for :meth:`row_norms`, ``[B, H]``: the norms the rows would
        have if each layer's weight rows were orthogonal (``|A_l[k]|^2 ~ sum_i W_l[k,i]^2 m_i
        |A_{l-1}[i]|^2``), one ``[B, H_l] x [H_l, H_{l-1}]`` product per layer instead of a Gram
        matrix per region. Exact for the first layer. Any positive row scaling is a valid
        preconditioner of the dual ascent (the returned multipliers are rescaled to the raw
        rows), so this trades only convergence speed, never soundness."""
        batch = self.sign.shape[0]
        if not self.weights:
            return self.sign.new_zeros(batch, 0)
        sq = (self.weights[0] ** 2).sum(dim=1).expand(batch, -1)
        parts = [sq]
        for i in range(1, len(self.weights)):
            sq = (self.masks[i - 1] * sq) @ (self.weights[i] ** 2).T
            parts.append(sq)
        return torch.cat(parts, dim=1).clamp_min(0.0).sqrt()


@dataclass(frozen=True, eq=False)
class Regions:
    """A batch of ``B`` regions with their linearisation (float64 torch tensors): ``c [B,H]``,
    ``F1 [B,O,d]`` (computed on first use), ``F2 [B,O]``; ``active [B,H]`` bool; ``A [B,H,d]``
    only when built with ``dense=True`` (the LP solvers and the dense gate need it; the
    Lagrangian solver works through :meth:`operator` and :meth:`objective_multipliers`).
    ``hidden`` holds the hidden layers' weights (float64)."""

    active: torch.Tensor
    c: torch.Tensor
    F2: torch.Tensor
    box: InputBox
    hidden: tuple[torch.Tensor, ...]
    readout: torch.Tensor
    """The last layer's weights ``[O, H_last]`` (logits from the last ReLU outputs)."""
    input_dim: int
    A: torch.Tensor | None = None
    slope: torch.Tensor | None = None
    """Negative-side slope per hidden unit ``[H]``; ``None`` means all Relu (0)."""
    identity: tuple[bool, ...] = ()
    """Per hidden layer: its weight is exactly ``I`` (see :class:`RegionOperator`)."""
    f1_cache: torch.Tensor | None = field(default=None, repr=False)
    """:attr:`F1` once computed (or given)."""

    @property
    def F1(self) -> torch.Tensor:
        """``[B,O,d]``: the logits' linear part on each region, ``f = F1 x + F2``; a masked
        backward pass from the readout, ``O x d`` values per region, computed on first use."""
        if self.f1_cache is None:
            batch = len(self)
            masks = torch.split(self.masks(), [w.shape[0] for w in self.hidden], dim=1)
            acc = self.readout.expand(batch, -1, -1)
            for i in range(len(self.hidden) - 1, -1, -1):
                acc = acc * masks[i].unsqueeze(1)
                acc = acc if self.identity and self.identity[i] else acc @ self.hidden[i]
            object.__setattr__(self, "f1_cache", acc.contiguous())
        assert self.f1_cache is not None
        return self.f1_cache

    def objective_multipliers(
        self, coeffs: torch.Tensor, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """The objectives ``W = coeffs F1`` (``coeffs [B,R,O]``: combinations of the logits) in
        the operator's multiplier space: ``mu [B,R,H]`` with ``op.linear_transpose(mu) == W``
        (in exact arithmetic), zero except the last hidden layer's block, which is the readout
        through that layer's mask. So ``W - lam G`` is one backward pass, and ``F1`` is never
        formed. Needs a hidden layer (a head without one has ``F1 = readout``)."""
        if not self.hidden:
            raise ValueError("objective_multipliers needs a hidden layer")
        last = self.hidden[-1].shape[0]
        top = (coeffs.to(dtype) @ self.readout.to(dtype)) * self.masks(dtype)[:, -last:].unsqueeze(
            1
        )
        n_below = self.active.shape[1] - last
        return torch.cat([top.new_zeros(*top.shape[:2], n_below), top], dim=2)

    def masks(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The activation masks ``[B, H]``: 1 where active, the unit's slope where inactive."""
        act = self.active.to(dtype)
        if self.slope is None:
            return act
        return act + (1.0 - act) * self.slope.to(dtype)

    def __len__(self) -> int:
        return int(self.active.shape[0])

    @cached_property
    def sign(self) -> torch.Tensor:
        """``+1`` active, ``-1`` inactive, ``[B, H]`` (computed once; not to be modified)."""
        return self.active.to(torch.float64) * 2.0 - 1.0

    @cached_property
    def h(self) -> torch.Tensor:
        """Right-hand sides of ``G x <= h``, ``[B, H]`` (computed once; not to be modified)."""
        return self.sign * self.c

    def constraints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, h)`` with ``S = {x in box : G x <= h}``; ``G [B,H,d]``, ``h [B,H]``."""
        if self.A is None:
            raise ValueError("dense constraints need linearize(..., dense=True)")
        return -self.sign.unsqueeze(2) * self.A, self.h

    def operator(
        self, dtype: torch.dtype = torch.float64, *, gemm: torch.dtype | None = None
    ) -> RegionOperator:
        """The constraint operator in ``dtype``; ``gemm``: the weights' dtype, if lower (the
        products run in it, inputs rounded to it, outputs back in ``dtype``)."""
        masks = torch.split(self.masks(dtype), [w.shape[0] for w in self.hidden], dim=1)
        return RegionOperator(
            weights=tuple(w.to(gemm or dtype) for w in self.hidden),
            masks=tuple(masks[:-1]),
            sign=self.sign.to(dtype),
            input_dim=self.input_dim,
            identity=self.identity or tuple(_is_identity(w) for w in self.hidden),
        )

    def select(self, idx: NDArray[np.int64] | list[int]) -> Regions:
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return Regions(
            active=self.active[index],
            c=self.c[index],
            F2=self.F2[index],
            box=self.box,
            hidden=self.hidden,
            readout=self.readout,
            input_dim=self.input_dim,
            f1_cache=None if self.f1_cache is None else self.f1_cache[index],
            A=None if self.A is None else self.A[index],
            slope=self.slope,
            identity=self.identity,
        )


def linearize(head: PLHead, active: BoolArray, *, box: InputBox, dense: bool = True) -> Regions:
    """Linearise the head on the regions of the given patterns ``[B, H]``: offsets ``c`` by a
    masked forward pass of the biases, ``F1`` (lazily, :attr:`Regions.F1`) by a masked backward
    pass from the logits, and (``dense=True``) the pre-activation rows ``A``."""
    act = torch.from_numpy(np.ascontiguousarray(active, dtype=np.bool_))
    if act.ndim != 2 or act.shape[1] != head.n_hidden:
        raise ValueError(f"patterns must be [B, {head.n_hidden}], got {tuple(act.shape)}")
    batch = act.shape[0]
    weights = [torch.from_numpy(layer.weight) for layer in head.layers]
    biases = [torch.from_numpy(layer.bias) for layer in head.layers]
    slope = None if head.is_relu else torch.from_numpy(head.negative_slope)
    act64 = act.to(torch.float64)
    full = act64 if slope is None else act64 + (1.0 - act64) * slope
    masks = torch.split(full, list(head.hidden_sizes), dim=1)
    c_parts: list[torch.Tensor] = []
    off = torch.zeros(batch, head.input_dim, dtype=torch.float64)
    for i, (w, b) in enumerate(zip(weights[:-1], biases[:-1], strict=True)):
        c_l = (b.expand(batch, -1) if i == 0 else off @ w.T + b).contiguous()
        c_parts.append(c_l)
        off = masks[i] * c_l
    f2 = off @ weights[-1].T + biases[-1] if c_parts else biases[-1].expand(batch, -1).clone()
    identity = tuple(_is_identity(w) for w in weights[:-1])
    a_all = _dense_rows(weights[:-1], masks, batch, head.input_dim) if dense else None
    c_all = torch.cat(c_parts, dim=1) if c_parts else torch.zeros(batch, 0, dtype=torch.float64)
    return Regions(
        active=act,
        c=c_all,
        F2=f2,
        box=box,
        hidden=tuple(weights[:-1]),
        readout=weights[-1],
        input_dim=head.input_dim,
        A=a_all,
        slope=slope,
        identity=identity,
    )


def _is_identity(w: torch.Tensor) -> bool:
    """Whether ``w`` is exactly the square identity matrix (checked once per call, ``O(H^2)``
    elementwise, far below the GEMMs it saves)."""
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        return False
    diagonal = w.diagonal()
    return bool((diagonal == 1).all()) and int(torch.count_nonzero(w)) == w.shape[0]


def _dense_rows(
    weights: list[torch.Tensor], masks: tuple[torch.Tensor, ...], batch: int, d: int
) -> torch.Tensor:
    if not weights:
        return torch.zeros(batch, 0, d, dtype=torch.float64)
    parts = [weights[0].expand(batch, -1, -1)]
    for i in range(1, len(weights)):
        parts.append(weights[i] @ (masks[i - 1].unsqueeze(2) * parts[-1]))
    return torch.cat(parts, dim=1)
