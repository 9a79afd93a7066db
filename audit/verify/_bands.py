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
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._affine import AffineHead

__all__ = ["BAND_FRACTION", "wide_band"]

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
) -> str | None:
    """The first pair of patches whose band is not bounded, as a failure message; ``None``
    when every band is empty or thin. ``x`` ``[claims, d]``: the claimed samples (cut values);
    ``active`` ``[claims, H]``: their regions' signs; ``patch`` ``[claims]``; ``patterns``
    ``[P, H]``: the sign each patch's gate requires (1 = ``z >= 0``). ``dense_ties`` ``[P, H]``
    (the dense gate): the neurons tied at each patch's claimed sample, whose stored rows
    ``structure.patch`` does not check; ``None``: the activation gate."""
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
    band = 1.0 / n
    w1, b1 = affine.weights[0], affine.biases[0]
    h1 = w1.shape[0]
    first = _bounding(w1, b1, low, high, band=band, reach=reach)  # [H1]
    sizes = [w.shape[0] for w in affine.weights[:-1]]
    layer = np.repeat(np.arange(len(sizes)), sizes)
    for u in sorted(set(patch.tolist())):
        claim = int(np.flatnonzero(patch == u)[0])
        differ = patterns != active[claim][None, :]  # [P, H]
        differ[u] = False
        count = differ.sum(axis=1)
        if dense_ties is not None:
            differ &= _first_differing_layer(differ, layer) & ~dense_ties
        open_ = ~(differ[:, :h1] & first[None, :]).any(axis=1)
        open_[u] = False
        if not open_.any():
            continue
        deep = _deep_bounding(affine, x[claim], low, high, band=band, reach=reach)
        still = open_ & ~(differ[:, h1:] & deep[None, :]).any(axis=1)
        if still.any():
            v = int(np.flatnonzero(still)[0])
            return (
                f"inside the region of patch {u}, the gate of patch {v} is on wherever its "
                f"{int(count[v])} differing neurons are within 1/n of 0, and no neuron among "
                f"them keeps that band thin (within {BAND_FRACTION:g} of the box's diameter of "
                "the region's boundary): the served model there is the original plus both "
                "patches, which no claim's certificate covers"
            )
    return None


def _first_differing_layer(
    differ: NDArray[np.bool_], layer: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """``[P, H]``: per other patch, the neurons of the first layer where its pattern differs.
    A dense gate's row is the patch's own linearisation, the served pre-activation on the
    claim's region only where the two patterns agree on every earlier layer."""
    last = np.iinfo(np.int64).max
    first = np.where(differ, layer[None, :], last).min(axis=1)  # [P]
    return np.asarray(layer[None, :] == first[:, None])


def _bounding(
    rows: F64, offsets: F64, low: float, high: float, *, band: float, reach: float
) -> NDArray[np.bool_]:
    """Per affine function ``rows[k] . x + offsets[k]``: does it bound a band, by being at least
    ``band`` away from 0 on the whole box, or by a gradient of norm at least ``reach``?"""
    mid, radius = 0.5 * (low + high), 0.5 * (high - low)
    centre = rows.sum(axis=1) * mid + offsets
    spread = np.abs(rows).sum(axis=1) * radius
    empty = (centre - spread >= band) | (centre + spread <= -band)
    thin = np.linalg.norm(rows, axis=1) >= reach
    return np.asarray(empty | thin)


def _deep_bounding(
    affine: AffineHead, x: F64, low: float, high: float, *, band: float, reach: float
) -> NDArray[np.bool_]:
    """:func:`_bounding` for the neurons after the first layer, on ``x``'s linear region (its
    rows and offsets from :meth:`AffineHead.local_affine`)."""
    rows, offsets, _, _ = affine.local_affine(x)
    h1 = affine.weights[0].shape[0]
    return _bounding(rows[h1:], offsets[h1:], low, high, band=band, reach=reach)


def gate_patterns(params: Any, z: F64, patch: NDArray[np.int64]) -> NDArray[np.bool_]:
    """``[P, H]``: the sign each patch requires (1 = ``z >= 0``): the stored ``pos`` of the
    activation gate, else (dense gate) the sign pattern of the patch's first claimed sample."""
    if params.pos is not None:
        return np.asarray(params.pos).T > 0.5
    patterns = np.zeros((params.patches, z.shape[1]), dtype=bool)
    for row in range(len(patch) - 1, -1, -1):  # the first claim of each patch wins
        patterns[patch[row]] = z[row] >= 0
    return patterns
