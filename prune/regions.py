"""Linear regions of the PL head (DESIGN.md §3.1).

The region of a cut value ``x0`` is fixed by its activation pattern ``sigma`` (``True`` where the
hidden pre-activation ``z_k(x0) >= 0``):

    S(sigma) = { x in box : z_k(x) >= 0 where sigma_k, z_k(x) <= 0 elsewhere }.

On ``S`` the pre-activations are affine, ``z = A x + c``, and so are the logits,
``f(x) = F1 x + F2``; both are obtained by propagating the layers with the ReLU masks fixed to
``sigma``. In constraint form ``S = { x in box : G x <= h }`` with ``G = -s*A``, ``h = s*c`` and
``s = +1`` on active neurons, ``-1`` on inactive ones (one row per hidden neuron, in the order of
the ``prune.hidden`` tensors). Linearisation depends only on the pattern, never on the point, so
regions are keyed by pattern and rebuilt from it when needed.

The input box is declared, not inferred at verification time: for input-space cuts it is the data
range (``[0, 1]`` for the bundled data sets), for feature-space cuts
``[min(0, 1.1 * min), 1.1 * max]`` over the training features. Certificates hold on ``S``, which
is inside the box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prune.errors import DataError
from prune.model import PLHead

__all__ = ["InputBox", "Regions", "box_from_data", "linearize", "pattern_keys", "patterns_of"]

Array = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class InputBox:
    """Scalar bounds ``low <= x_i <= high`` for every coordinate of the cut tensor; ``source``
    says how they were declared (``data-range`` or ``feature-range``)."""

    low: float
    high: float
    source: str

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low < self.high):
            raise DataError(f"invalid input box [{self.low}, {self.high}]")

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
class Regions:
    """A batch of ``B`` regions with their linearisation (float64 torch tensors):
    ``A [B,H,d]``, ``c [B,H]``, ``F1 [B,O,d]``, ``F2 [B,O]``; ``active [B,H]`` bool."""

    active: torch.Tensor
    A: torch.Tensor
    c: torch.Tensor
    F1: torch.Tensor
    F2: torch.Tensor
    box: InputBox
    shared: int = 0
    """The first ``shared`` rows of ``A`` are the same matrix in every region (the first
    layer's weights); solvers may exploit it."""

    def __len__(self) -> int:
        return int(self.active.shape[0])

    @property
    def sign(self) -> torch.Tensor:
        """``+1`` active, ``-1`` inactive, ``[B, H]``."""
        return self.active.to(self.A.dtype) * 2.0 - 1.0

    def constraints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, h)`` with ``S = {x in box : G x <= h}``; ``G [B,H,d]``, ``h [B,H]``."""
        s = self.sign
        return -s.unsqueeze(2) * self.A, s * self.c

    def select(self, idx: NDArray[np.int64] | list[int]) -> Regions:
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return Regions(
            active=self.active[index],
            A=self.A[index],
            c=self.c[index],
            F1=self.F1[index],
            F2=self.F2[index],
            box=self.box,
            shared=self.shared,
        )


def linearize(head: PLHead, active: BoolArray, *, box: InputBox) -> Regions:
    """Linearise the head on the regions of the given patterns ``[B, H]``."""
    act = torch.from_numpy(np.ascontiguousarray(active, dtype=np.bool_))
    if act.ndim != 2 or act.shape[1] != head.n_hidden:
        raise ValueError(f"patterns must be [B, {head.n_hidden}], got {tuple(act.shape)}")
    batch = act.shape[0]
    d = head.input_dim
    lin = torch.eye(d, dtype=torch.float64).expand(batch, d, d)
    off = torch.zeros(batch, d, dtype=torch.float64)
    a_parts: list[torch.Tensor] = []
    c_parts: list[torch.Tensor] = []
    start = 0
    first = True
    for layer in head.layers[:-1]:
        w = torch.from_numpy(layer.weight)
        b = torch.from_numpy(layer.bias)
        if first:
            a_l = w.expand(batch, *w.shape)
            c_l = b.expand(batch, b.shape[0])
            first = False
        else:
            a_l = torch.matmul(w, lin)
            c_l = off @ w.T + b
        a_parts.append(a_l)
        c_parts.append(c_l)
        width = w.shape[0]
        mask = act[:, start : start + width].to(torch.float64)
        start += width
        lin = mask.unsqueeze(2) * a_l
        off = mask * c_l
    last = head.layers[-1]
    w_out = torch.from_numpy(last.weight)
    b_out = torch.from_numpy(last.bias)
    if first:
        f1 = w_out.expand(batch, *w_out.shape).contiguous()
        f2 = b_out.expand(batch, b_out.shape[0]).contiguous()
    else:
        f1 = torch.matmul(w_out, lin)
        f2 = off @ w_out.T + b_out
    a_all = torch.cat(a_parts, dim=1) if a_parts else torch.zeros(batch, 0, d, dtype=torch.float64)
    c_all = torch.cat(c_parts, dim=1) if c_parts else torch.zeros(batch, 0, dtype=torch.float64)
    shared = head.hidden_sizes[0] if head.hidden_sizes else 0
    return Regions(active=act, A=a_all, c=c_all, F1=f1, F2=f2, box=box, shared=shared)
