"""Thin gate bands: where another patch's gate can be on inside a certified region.

``region.certificate`` proves claim ``u`` at the points of its region ``S_u`` where the served
gates are ``g_u = 1`` and ``g_v = 0`` for every other patch ``v`` (docs/VERIFY.md, exception
(a)). With the activation gate, ``g_v(x) = relu(1 - n V_v(x))``, and on ``S_u`` the violation
of ``v``'s pattern is ``V_v(x) = sum_{k in D(u,v)} |z_k(x)|`` over the neurons ``D(u,v)`` whose
sign the two patterns fix differently. So ``g_v > 0`` inside ``S_u`` only where every such
``|z_k| < 1/n``. The exception is harmless only while that set is thin; a neuron that is nearly
flat on ``S_u`` (a near-dead unit planted in the original, or a weak one) makes it as wide as
the region, and the two patches' pushes then meet over all of it (threat 21, ``shared_region``,
is the extreme case: the same pattern, ``D`` empty).

The rule (this module): for every claim ``u`` and every other patch ``v``, some neuron
``k in D(u,v)`` must bound the band, on ``u``'s linear region (``z_k(x) = a_k . x + c_k``
there), in one of two ways:

* *empty*: ``|a_k . x + c_k| >= 1/n`` on the whole declared box (interval bound), or
* *thin*: ``1 / (n |a_k|_2) <= BAND_FRACTION * diam(box)``: every point of the band lies within
  that distance of the hyperplane ``z_k = 0``, which ``S_u`` lies on one side of, so within it
  of ``S_u``'s boundary.

Then exception (a) holds only within ``BAND_FRACTION`` of the box's diameter of the boundary of
the claim's region. First-layer neurons have the same ``a_k`` on every region (the weight row),
so most pairs are settled without any region's Jacobian; the rest take one masked backward
product per claim. The dense gate's rows are the patch's own linearisations, which are the
served ``z`` on the claim's region only in the first layer where the two patterns differ
(earlier layers agree, so the linearisations do), and a row tied at the patch's sample is not
checked by ``structure.patch``: only those neurons, untied, bound its bands. The routed gate evaluates
one patch per input, the one whose pattern the input has: it has no such band."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._affine import AffineHead
from audit.verify._framework import Policy

__all__ = ["BAND_FRACTION", "PAIR_BLOCK", "mismatches", "wide_band"]

BAND_FRACTION = 1e-3
"""Widest band allowed, as a fraction of the declared box's diameter (``prune unlearn``'s
``n = 1000`` on a trained layer: ``1 / (n |a_k|)`` is about 1e-5 to 1e-4 of it)."""

F64 = NDArray[np.float64]


def wide_band(
    affine: AffineHead,
    box: tuple[float, float] | None,
    x: F64,
    active: NDArray[np.bool_],
    patch: NDArray[np.int64],
    patterns: NDArray[np.bool_],
    *,
    n: float,
    dense_ties: NDArray[np.bool_] | None = None,
    work: float = Policy.band_work,
) -> str | None:
    """The first pair of patches whose band is not bounded, as a failure message; ``None``
    when every band is empty or thin. ``x`` ``[claims, d]``: the claimed samples (cut values);
    ``active`` ``[claims, H]``: their regions' signs; ``patch`` ``[claims]``; ``patterns``
    ``[P, H]``: the sign each patch's gate requires (1 = ``z >= 0``). ``dense_ties`` ``[P, H]``
    (the dense gate): the neurons tied at each patch's claimed sample, whose stored rows
    ``structure.patch`` does not check; ``None``: the activation gate. ``work``: the most
    multiply-adds the deeper rows of the claims' regions may take (:attr:`Policy.band_work`); a proof
    that needs more fails (fail closed: its bands are not shown bounded).

    Cost: the pairs are counted by matrix products (:func:`mismatches`) over blocks of claims
    of at most ``PAIR_BLOCK`` pairs, so ``P`` patches over ``H`` neurons cost ``O(P^2 H)``
    multiply-adds in BLAS and ``O(P H)`` memory, never a Python loop over pairs; the
    model-size limit bounds ``P H`` (the activation gate stores a ``[H, P]`` pattern). A claim
    whose pairs the first layer does not settle costs one region's rows, ``sum_l H_l H_{l-1} d``
    multiply-adds: linear in the claims, and capped by ``work``."""
    patches = patterns.shape[0]
    if patches < 2 or not affine.weights[:-1]:
        return None
    if box is None:
        return (
            "the certificate declares no input box: the band where another patch's gate is on "
            "inside a certified region cannot be bounded"
        )
    low, high = box
    dim = x.shape[1]
    reach = 1.0 / (n * BAND_FRACTION * (high - low) * math.sqrt(dim))  # smallest |a_k| that is thin
    limits = _Band(low=low, high=high, band=1.0 / n, reach=reach)
    first = _bounding(affine.weights[0], affine.biases[0], limits)  # [H1]
    sizes = [w.shape[0] for w in affine.weights[:-1]]
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    owners, rows = np.unique(patch, return_index=True)  # each patch and its first claim
    per_claim = float(sum(w.shape[0] * w.shape[1] for w in affine.weights[1:-1]) * dim)
    budget = _Budget(left=work, per_claim=per_claim)
    step = max(1, PAIR_BLOCK // patches)
    for start in range(0, len(owners), step):
        block, claims = owners[start : start + step], rows[start : start + step]
        try:
            bad = _unbounded(
                affine, x[claims], active[claims], block, patterns, first, edges, limits,
                dense_ties, budget,
            )  # fmt: skip
        except _OverBudget as exc:
            return str(exc)
        hit = np.flatnonzero(bad.any(axis=1))
        if hit.size:
            i = int(hit[0])
            u, v = int(block[i]), int(np.flatnonzero(bad[i])[0])
            count = int((patterns[v] != active[claims[i]]).sum())
            return (
                f"inside the region of patch {u}, the gate of patch {v} is on wherever its "
                f"{count} differing neurons are within 1/n of 0, and no neuron among "
                f"them keeps that band thin (within {BAND_FRACTION:g} of the box's diameter of "
                "the region's boundary): the served model there is the original plus both "
                "patches, which no claim's certificate covers"
            )
    return None


PAIR_BLOCK = 1 << 24
"""Pairs counted per block of claims (``[claims, P]`` float32 counts: 64 MiB a matrix), here and
in ``structure.patch``'s one-region rule."""


class _OverBudget(Exception):
    pass


@dataclass
class _Budget:
    left: float
    per_claim: float

    def spend(self, claims: int) -> None:
        cost = claims * self.per_claim
        if cost > self.left:
            raise _OverBudget(
                f"the thin-band rule needs the deeper rows of {claims} more claims' regions "
                f"({cost:.3g} multiply-adds), over what is left of the verifier's budget of "
                f"{self.left:.3g}: their bands cannot be shown bounded (Policy.band_work)"
            )
        self.left -= cost


@dataclass(frozen=True)
class _Band:
    """The box ``[low, high]``, the band half-width ``1/n`` and the smallest thin gradient."""

    low: float
    high: float
    band: float
    reach: float


def _unbounded(
    affine: AffineHead,
    x: F64,
    active: NDArray[np.bool_],
    owner: NDArray[np.int64],
    patterns: NDArray[np.bool_],
    first: NDArray[np.bool_],
    edges: NDArray[np.int64],
    limits: _Band,
    dense_ties: NDArray[np.bool_] | None,
    budget: _Budget,
) -> NDArray[np.bool_]:
    """``[claims, P]``: the pairs (the claim's patch ``owner[i]``, patch ``v``) whose band no
    neuron bounds. First-layer neurons (the same rows on every region) settle most pairs; only
    the claims left with an open pair pay for their region's deeper rows. The dense gate's rows
    are the served ``z`` only in the first layer where the two patterns differ, so a pair is
    decided there, bounded or not."""
    untied = None if dense_ties is None else ~dense_ties
    h1 = int(edges[1])
    mask = np.broadcast_to(first, (len(owner), h1))
    bounded = mismatches(mask, active[:, :h1], patterns[:, :h1], keep=_cols(untied, 0, h1)) > 0
    decided = bounded.copy()
    if untied is not None:
        decided |= mismatches(None, active[:, :h1], patterns[:, :h1]) > 0
    mine = (np.arange(len(owner)), owner)
    decided[mine] = bounded[mine] = True
    todo = np.flatnonzero(~decided.all(axis=1))
    if not todo.size or len(edges) < 3:
        return np.asarray(~bounded)
    budget.spend(len(todo))
    deep = np.stack([_deep_bounding(affine, x[i], limits) for i in todo])  # [todo, H - h1]
    for lo, hi in zip(edges[1:-1].tolist(), edges[2:].tolist(), strict=True):
        signs, want = active[todo, lo:hi], patterns[:, lo:hi]
        mask = deep[:, lo - h1 : hi - h1]
        found = mismatches(mask, signs, want, keep=_cols(untied, lo, hi)) > 0
        open_ = ~decided[todo]
        bounded[todo] |= open_ & found
        here = found if untied is None else mismatches(None, signs, want) > 0
        decided[todo] |= open_ & here
    return np.asarray(~bounded)


def _cols(a: NDArray[np.bool_] | None, lo: int, hi: int) -> NDArray[np.bool_] | None:
    return None if a is None else a[:, lo:hi]


def mismatches(
    mask: NDArray[np.bool_] | None,
    signs: NDArray[np.bool_],
    patterns: NDArray[np.bool_],
    *,
    keep: NDArray[np.bool_] | None = None,
) -> NDArray[np.float32]:
    """``[U, P]``: for each row ``u`` and pattern ``v``, the number of neurons ``k`` with
    ``mask[u, k]`` (every ``k`` for ``None``) and ``keep[v, k]`` (likewise) where
    ``signs[u, k] != patterns[v, k]``, by two matrix products: with ``xor(a, b) = a + b - 2ab``
    the count is ``(m a) . q + (m (1 - 2a)) . (q b)``, ``q`` the ``keep`` row. Exact in float32:
    every partial sum is an integer of magnitude at most the width, below ``2^24``."""
    width = signs.shape[1]
    if width >= 1 << 24:
        raise ValueError(f"{width} neurons in one layer: counts are not exact in float32")
    a = signs.astype(np.float32)
    m = np.ones_like(a) if mask is None else mask.astype(np.float32)
    b = patterns.astype(np.float32)
    if keep is None:
        return np.asarray((m * a).sum(axis=1, keepdims=True) + (m * (1 - 2 * a)) @ b.T)
    q = keep.astype(np.float32)
    return np.asarray((m * a) @ q.T + (m * (1 - 2 * a)) @ (q * b).T)


def _bounding(rows: F64, offsets: F64, limits: _Band) -> NDArray[np.bool_]:
    """Per affine function ``rows[k] . x + offsets[k]``: does it bound a band, by being at least
    ``band`` away from 0 on the whole box, or by a gradient of norm at least ``reach``?"""
    mid, radius = 0.5 * (limits.low + limits.high), 0.5 * (limits.high - limits.low)
    centre = rows.sum(axis=1) * mid + offsets
    spread = np.abs(rows).sum(axis=1) * radius
    empty = (centre - spread >= limits.band) | (centre + spread <= -limits.band)
    thin = np.linalg.norm(rows, axis=1) >= limits.reach
    return np.asarray(empty | thin)


def _deep_bounding(affine: AffineHead, x: F64, limits: _Band) -> NDArray[np.bool_]:
    """:func:`_bounding` for the neurons after the first layer, on ``x``'s linear region (its
    rows and offsets from :meth:`AffineHead.local_affine`)."""
    rows, offsets, _, _ = affine.local_affine(x)
    h1 = affine.weights[0].shape[0]
    return _bounding(rows[h1:], offsets[h1:], limits)


def gate_patterns(params: Any, z: F64, patch: NDArray[np.int64]) -> NDArray[np.bool_]:
    """``[P, H]``: the sign each patch requires (1 = ``z >= 0``): the stored ``pos`` of the
    activation gate, else (dense gate) the sign pattern of the patch's first claimed sample."""
    if params.pos is not None:
        return np.asarray(params.pos).T > 0.5
    patterns = np.zeros((params.patches, z.shape[1]), dtype=bool)
    for row in range(len(patch) - 1, -1, -1):  # the first claim of each patch wins
        patterns[patch[row]] = z[row] >= 0
    return patterns
