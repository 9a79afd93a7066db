"""The region certificate's math against slow references: the weak-duality bound is never below
the exact LP maximum over the region (any multipliers), is tight with the LP's own duals, and
the float32 error bound covers float32 evaluation at sampled points of the region."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from audit.verify._affine import AffineHead
from audit.verify._certificate import certify_rows, float32_errors, gamma


def _head(rng: np.random.Generator, sizes: tuple[int, ...]) -> AffineHead:
    weights = tuple(rng.normal(size=(o, i)) / np.sqrt(i) for i, o in itertools.pairwise(sizes))
    biases = tuple(rng.normal(size=o) * 0.1 for o in sizes[1:])
    return AffineHead(weights, biases)


def _region(head: AffineHead, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z_rows, z_off, _, _ = head.local_affine(x0)
    z0, _ = head.forward(x0[None, :])
    active = z0[0] >= 0
    s = np.where(active, -1.0, 1.0)
    return active, z_rows * s[:, None], -z_off * s


@pytest.mark.parametrize("seed", range(5))
def test_bound_is_sound_and_tight_with_lp_duals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    head = _head(rng, (6, 8, 7, 4))
    x0 = rng.uniform(0, 1, size=6)
    active, a_ub, b_ub = _region(head, x0)
    _, _, f_rows, f_off = head.local_affine(x0)
    c = np.zeros(4)
    c[1], c[2] = 1.0, -1.0
    lp = linprog(-(c @ f_rows), A_ub=a_ub, b_ub=b_ub, bounds=[(0, 1)] * 6, method="highs")
    assert lp.status == 0
    exact = -lp.fun + c @ f_off
    lam_lp = np.maximum(-lp.ineqlin.marginals, 0.0)
    for lam in (lam_lp, rng.uniform(0, 2, size=len(lam_lp)), np.zeros(len(lam_lp))):
        bounds = certify_rows(
            head=head,
            coeffs=c[None, :],
            bound_const=np.zeros(1),
            masks=active[None, :].astype(float),
            lam=lam[None, :],
            box=(0.0, 1.0),
            patch_x=None,
            output_errors=np.zeros(1),
        )
        assert bounds.dual[0] >= exact - 1e-9
    tight = certify_rows(
        head=head,
        coeffs=c[None, :],
        bound_const=np.zeros(1),
        masks=active[None, :].astype(float),
        lam=lam_lp[None, :],
        box=(0.0, 1.0),
        patch_x=None,
        output_errors=np.zeros(1),
    )
    assert tight.dual[0] == pytest.approx(exact, abs=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_float32_error_bound_covers_float32_evaluation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    head = _head(rng, (64, 32, 32, 10))
    x = rng.uniform(0, 1, size=(2000, 64))
    z, logits = head.forward(x)
    value = x.astype(np.float32)
    for i, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        value = value @ w.T.astype(np.float32) + b.astype(np.float32)
        if i < len(head.weights) - 1:
            value = np.maximum(value, np.float32(0))
    masks = (z >= 0).astype(float)
    for variant in (True, False):
        err, mag = float32_errors(head, masks, 1.0, served_pattern=variant)
        assert (np.abs(value.astype(np.float64) - logits) <= err).all()
        assert (np.abs(logits) <= mag).all()


def test_gamma() -> None:
    assert gamma(1) == pytest.approx(2.0**-24, rel=1e-6)
    with pytest.raises(Exception, match="undefined"):
        gamma(2**24)


@pytest.mark.parametrize("seed", range(3))
def test_group_max_matches_ufunc_at(seed: int) -> None:
    """The absolute-value pass's per-group maxima (sort + reduceat) equal ``np.maximum.at`` on
    zeros, including groups that no row names and unsorted, repeated group ids."""
    from audit.verify._certificate import _GroupMax

    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 12, size=40)
    values = np.abs(rng.normal(size=(40, 5)))
    values[rng.random(values.shape) < 0.2] = 0.0
    want = np.zeros((15, 5))
    np.maximum.at(want, groups, values)
    assert np.array_equal(_GroupMax(groups, 15)(values), want)
    assert np.array_equal(_GroupMax(groups[:0], 3)(values[:0]), np.zeros((3, 5)))
