"""The exact part of ``region.probes`` against a slow reference: its branch and bound over the
classes returns the minimum margin over the region that one LP per class finds, skips classes
only by sound bounds, and spends no more LPs than its budget."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy.optimize import linprog

from audit.verify._affine import AffineHead
from audit.verify._probes import _lp_min_margin

CLASSES = 6


def _setup(seed: int) -> tuple[AffineHead, Any, np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    sizes = (7, 9, 8, CLASSES)
    weights = tuple(rng.normal(size=(o, i)) / np.sqrt(i) for i, o in itertools.pairwise(sizes))
    biases = tuple(rng.normal(size=o) * 0.1 for o in sizes[1:])
    head = AffineHead(weights, biases)
    x0 = rng.uniform(0.2, 0.8, size=sizes[0])
    z0, _ = head.forward(x0[None, :])
    params = SimpleNamespace(d=rng.normal(size=(2, CLASSES)), C=None, columns=lambda: None)
    cols = {"patch": np.asarray([1]), "target": np.asarray([int(rng.integers(CLASSES))])}
    return head, params, x0, z0[0] >= 0, cols


def _reference(head: AffineHead, params: Any, x0: np.ndarray, sign: np.ndarray, t: int) -> float:
    """One LP per class, no skipping: min over the region of (f + d)_t - (f + d)_j."""
    z_rows, z_off, f_rows, f_off = head.local_affine(x0)
    s = np.where(sign, -1.0, 1.0)
    off = f_off + params.d[1]
    values = []
    for j in range(CLASSES):
        if j == t:
            continue
        res = linprog(
            f_rows[t] - f_rows[j],
            A_ub=z_rows * s[:, None],
            b_ub=-z_off * s,
            bounds=[(0.0, 1.0)] * len(x0),
            method="highs",
        )
        assert res.status == 0
        values.append(res.fun + off[t] - off[j])
    return min(values)


def _unowned(head: Any, params: Any, x0: Any, sign: Any, cols: Any, budget: int) -> Any:
    """The exact part on claim 0 over the unit box, without owner multipliers or priorities."""
    return _lp_min_margin(
        head, params, x0, sign, 0, cols, (0.0, 1.0),
        owner=None, priority=np.zeros(CLASSES), budget=budget,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_branch_and_bound_is_the_exact_minimum(seed: int) -> None:
    head, params, x0, sign, cols = _setup(seed)
    t = int(cols["target"][0])
    want = _reference(head, params, x0, sign, t)
    value, argmin, solved, bounded, unsolved, left = _unowned(head, params, x0, sign, cols, 0)
    assert unsolved == 0 and left == 0 and solved + bounded == CLASSES - 1 and solved >= 1
    assert value == pytest.approx(want, abs=1e-7)
    assert argmin is not None and ((argmin >= -1e-9) & (argmin <= 1 + 1e-9)).all()
    z, logits = head.forward(argmin[None, :])  # the argmin is in the region with that margin
    assert (np.where(sign, z[0] >= -1e-7, z[0] <= 1e-7)).all()
    margin = logits[0] + params.d[1]
    assert margin[t] - np.delete(margin, t).max() == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_budget_caps_the_lps_and_says_so(seed: int) -> None:
    head, params, x0, sign, cols = _setup(seed)
    t = int(cols["target"][0])
    value, _, solved, bounded, unsolved, left = _unowned(head, params, x0, sign, cols, 1)
    assert solved == 1 and unsolved == 0 and solved + bounded + left == CLASSES - 1
    assert value >= _reference(head, params, x0, sign, t) - 1e-7  # a class's exact minimum


def test_garbage_owner_multipliers_cost_lps_not_exactness() -> None:
    """Any multipliers give a sound floor: huge or zero ones never skip the true minimiser."""
    head, params, x0, sign, cols = _setup(0)
    t = int(cols["target"][0])
    want = _reference(head, params, x0, sign, t)
    for owner in (np.zeros((CLASSES - 1, 17)), np.full((CLASSES - 1, 17), 1e6)):
        value, *_ = _lp_min_margin(
            head,
            params,
            x0,
            sign,
            0,
            cols,
            (0.0, 1.0),
            owner=owner,
            priority=np.zeros(CLASSES),
            budget=0,
        )
        assert value == pytest.approx(want, abs=1e-7)


def test_probe_priority_of_another_width_is_ignored() -> None:
    """A served head with more outputs than the original's classes (refused by structure.patch)
    must not crash the exact part: the classes are then ordered by their margin at x0."""
    head, params, x0, sign, cols = _setup(1)
    t = int(cols["target"][0])
    value, *_ = _lp_min_margin(
        head,
        params,
        x0,
        sign,
        0,
        cols,
        (0.0, 1.0),
        owner=None,
        priority=np.zeros(CLASSES + 3),
        budget=0,
    )
    assert value == pytest.approx(_reference(head, params, x0, sign, t), abs=1e-7)
