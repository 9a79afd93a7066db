from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prune.errors import DataError
from prune.model import load_model
from prune.regions import InputBox, box_from_data, linearize, pattern_keys, patterns_of
from tests.prune._engine_models import random_mlp

BOX = InputBox(0.0, 1.0, "data-range")


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    raw = random_mlp(tmp_path_factory.mktemp("regions") / "m.onnx", dims=(5, 7, 6, 3), seed=2)
    return load_model(raw).head


def _points_in_region(head, x0: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Perturbations of x0 that keep its activation pattern (rejection sampling)."""
    pattern = patterns_of(head, x0[None])[0]
    found = []
    for scale in (1e-1, 1e-2, 1e-3):
        cand = np.clip(x0 + scale * rng.normal(size=(400, len(x0))), 0.0, 1.0)
        keep = (patterns_of(head, cand) == pattern).all(axis=1)
        found.append(cand[keep])
    return np.concatenate(found)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_head_is_affine_on_the_region(head, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x0 = rng.random(head.input_dim)
    pts = _points_in_region(head, x0, rng)
    assert len(pts) > 0
    reg = linearize(head, patterns_of(head, x0[None]), box=BOX)
    logits, z = head.forward(pts)
    X = torch.from_numpy(pts)
    lin_z = (X @ reg.A[0].T + reg.c[0]).numpy()
    lin_f = (X @ reg.F1[0].T + reg.F2[0]).numpy()
    np.testing.assert_allclose(lin_z, z, atol=1e-10)
    np.testing.assert_allclose(lin_f, logits, atol=1e-10)
    G, h = reg.constraints()
    assert ((X @ G[0].T - h[0]).numpy() <= 1e-12).all()


def test_constraints_are_violated_exactly_where_the_pattern_differs(head) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    x0 = rng.random(head.input_dim)
    reg = linearize(head, patterns_of(head, x0[None]), box=BOX)
    G, h = reg.constraints()
    others = rng.random((500, head.input_dim))
    same = (patterns_of(head, others) == patterns_of(head, x0[None])).all(axis=1)
    inside = ((torch.from_numpy(others) @ G[0].T - h[0]).numpy() <= 1e-12).all(axis=1)
    np.testing.assert_array_equal(same, inside)
    assert same.sum() < len(same)  # the test is not vacuous


@pytest.mark.parametrize("dims", [(5, 7, 6, 3), (4, 6, 5, 5, 2), (3, 2)])
def test_operator_matches_the_dense_constraints(tmp_path: Path, dims: tuple[int, ...]) -> None:
    """G x, lam G and the row norms through the layers equal the explicit matrix's."""
    head = load_model(random_mlp(tmp_path / "m.onnx", dims=dims, seed=4)).head
    rng = np.random.default_rng(0)
    act = patterns_of(head, rng.random((6, head.input_dim)))
    dense = linearize(head, act, box=BOX)
    lean = linearize(head, act, box=BOX, dense=False)
    assert lean.A is None
    for name in ("c", "F1", "F2"):
        torch.testing.assert_close(getattr(lean, name), getattr(dense, name))
    G, h = dense.constraints()
    x = torch.from_numpy(rng.normal(size=(6, 3, head.input_dim)))
    lam = torch.from_numpy(rng.random((6, 3, head.n_hidden)))
    op = lean.operator()
    torch.testing.assert_close(op.apply(x), x @ G.transpose(1, 2))
    torch.testing.assert_close(op.apply_transpose(lam), lam @ G)
    torch.testing.assert_close(op.row_norms(), G.norm(dim=2))
    torch.testing.assert_close(lean.h, h)


def test_pattern_keys_identify_regions(head) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(3).random((200, head.input_dim))
    act = patterns_of(head, x)
    keys = pattern_keys(act)
    for i in range(0, 200, 17):
        for j in range(0, 200, 13):
            assert (keys[i] == keys[j]) == bool((act[i] == act[j]).all())


def test_input_box_declaration() -> None:
    assert box_from_data(np.array([[0.0, 0.5, 1.0]]), input_space=True).as_method() == {
        "low": 0.0,
        "high": 1.0,
        "source": "data-range",
    }
    feat = box_from_data(np.array([[0.0, 2.0], [1.0, 4.0]]), input_space=False)
    assert feat.low == 0.0 and feat.high == pytest.approx(4.4)
    with pytest.raises(DataError):
        InputBox(1.0, 1.0, "bad")


def test_linearize_rejects_wrong_pattern_width(tmp_path: Path) -> None:
    head = load_model(random_mlp(tmp_path / "m.onnx")).head
    with pytest.raises(ValueError, match="patterns must be"):
        linearize(head, np.ones((1, head.n_hidden + 1), dtype=bool), box=BOX)


@pytest.mark.parametrize("dims", [(5, 7, 6, 3), (4, 6, 5, 5, 2)])
def test_objective_multipliers_and_transpose_mass(tmp_path: Path, dims: tuple[int, ...]) -> None:
    """``linear_transpose(objective_multipliers(c)) == c F1`` (F1 itself computed on first use,
    as linearize used to), and the mass is the absolute backward pass summed over the input."""
    head = load_model(random_mlp(tmp_path / "m.onnx", dims=dims, seed=5)).head
    rng = np.random.default_rng(1)
    lean = linearize(head, patterns_of(head, rng.random((4, head.input_dim))), box=BOX, dense=False)
    assert lean.f1_cache is None
    coeffs = torch.from_numpy(rng.normal(size=(4, 3, head.classes)))
    op = lean.operator()
    torch.testing.assert_close(
        op.linear_transpose(lean.objective_multipliers(coeffs)), coeffs @ lean.F1
    )
    a = torch.from_numpy(rng.random((4, 3, head.n_hidden)))
    sizes = head.hidden_sizes
    parts = torch.split(a, list(sizes), dim=2)
    masks = torch.split(lean.masks(), list(sizes), dim=1)
    acc = parts[-1]
    for i in range(len(sizes) - 1, 0, -1):
        acc = (acc @ lean.hidden[i].abs()) * masks[i - 1].unsqueeze(1) + parts[i - 1]
    torch.testing.assert_close(op.transpose_mass(a), (acc @ lean.hidden[0].abs()).sum(dim=2))
    # a lower-precision GEMM operator computes the same products, rounded
    low = lean.operator(torch.float32, gemm=torch.bfloat16)
    assert low.weights[0].dtype == torch.bfloat16
    approx = low.linear_transpose(a.to(torch.float32))
    assert approx.dtype == torch.float32
    torch.testing.assert_close(approx.double(), op.linear_transpose(a), rtol=0.05, atol=0.05)
