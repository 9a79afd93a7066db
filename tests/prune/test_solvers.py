"""Every solver certifies the spec over the whole region; checked by an exact LP built here from
autograd (independent of prune.regions and prune.solvers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from prune.errors import PatchError
from prune.model import PLHead, load_model
from prune.regions import InputBox, linearize, patterns_of
from prune.solvers import (
    SOLVERS,
    LagrangianSolver,
    PatchSolution,
    dense_dual_bound,
    make_solver,
)
from tests.prune._engine_models import digits_work, random_mlp, single_thread

BOX = InputBox(0.0, 1.0, "data-range")
MARGIN = 0.25


class Case:
    def __init__(self, head: PLHead, x: np.ndarray, targets: np.ndarray) -> None:
        self.head, self.x, self.targets = head, x, targets
        self.regions = linearize(head, patterns_of(head, x), box=BOX)


@pytest.fixture(scope="module")
def case() -> Case:
    work = digits_work()
    head = load_model(work.raw).head
    x = work.x_train[[0, 7, 21]].astype(np.float64)
    logits, _ = head.forward(x)
    masked = logits.copy()
    masked[np.arange(len(x)), logits.argmax(axis=1)] = -np.inf
    return Case(head, x, masked.argmax(axis=1))


def _torch_head(head: PLHead) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for i, layer in enumerate(head.layers):
        lin = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0]).double()
        lin.weight.data = torch.from_numpy(layer.weight.copy())
        lin.bias.data = torch.from_numpy(layer.bias.copy())
        layers.append(lin)
        if i < len(head.layers) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _region_by_autograd(head: PLHead, x0: np.ndarray) -> tuple[np.ndarray, ...]:
    """(G, h, F1, F2) of x0's region from autograd Jacobians, like the reference code does."""
    net = _torch_head(head)
    pre = [m for m in net if isinstance(m, torch.nn.Linear)][:-1]

    def hidden(x: torch.Tensor) -> torch.Tensor:
        zs, h = [], x
        for m in net:
            h = m(h)
            if isinstance(m, torch.nn.Linear) and any(m is p for p in pre):
                zs.append(h)
        return torch.cat(zs)

    x = torch.from_numpy(x0)
    A = torch.autograd.functional.jacobian(hidden, x).numpy()
    z = hidden(x).detach().numpy()
    c = z - A @ x0
    F1 = torch.autograd.functional.jacobian(net, x).numpy()
    F2 = net(x).detach().numpy() - F1 @ x0
    s = np.where(z >= 0, 1.0, -1.0)
    return -s[:, None] * A, s * c, F1, F2


def exact_min_margin(
    head: PLHead, x0: np.ndarray, t: int, C: np.ndarray | None, d: np.ndarray
) -> float:
    """min over the region of (f+p)_t - max_j (f+p)_j, by one HiGHS LP per class."""
    G, h, F1, F2 = _region_by_autograd(head, x0)
    F1 = F1 + (0 if C is None else C.T)
    F2 = F2 + d
    worst = np.inf
    for j in range(F1.shape[0]):
        if j == t:
            continue
        res = linprog(F1[t] - F1[j], A_ub=G, b_ub=h, bounds=[(0.0, 1.0)] * len(x0), method="highs")
        assert res.status == 0
        worst = min(worst, res.fun + F2[t] - F2[j])
    return float(worst)


def _solve(name: str, case: Case) -> PatchSolution:
    margins = torch.full((len(case.x),), MARGIN, dtype=torch.float64)
    return make_solver(name).solve(case.regions, torch.from_numpy(case.targets), margin=margins)


@pytest.fixture(scope="module")
def solutions(case: Case) -> dict[str, PatchSolution]:
    with single_thread():
        return {name: _solve(name, case) for name in SOLVERS}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_certifies_the_whole_region(
    case: Case, solutions: dict[str, PatchSolution], name: str
) -> None:
    sol = solutions[name]
    for b in range(len(case.x)):
        C = None if sol.C is None else sol.C[b].numpy()
        exact = exact_min_margin(case.head, case.x[b], int(case.targets[b]), C, sol.d[b].numpy())
        assert exact >= MARGIN - 1e-7, (name, b, exact)
        # the reported certified margin is a sound lower bound of the exact minimum
        assert float(sol.certified_margin[b]) <= exact + 1e-6
        assert float(sol.certified_margin[b]) >= MARGIN - 1e-9


def test_solvers_agree_and_reassure_is_minimal(
    case: Case, solutions: dict[str, PatchSolution]
) -> None:
    """Same points, targets and margin: all certify (test above); REASSURE's patch is the
    smallest in max over the region of |p|_inf, as its LP promises."""
    sizes: dict[str, list[float]] = {}
    for name, sol in solutions.items():
        sizes[name] = []
        for b in range(len(case.x)):
            G, h, _, _ = _region_by_autograd(case.head, case.x[b])
            C = (
                np.zeros((case.head.input_dim, case.head.classes))
                if sol.C is None
                else sol.C[b].numpy()
            )
            d = sol.d[b].numpy()
            biggest = 0.0
            for o in range(case.head.classes):
                for sign in (1.0, -1.0):
                    res = linprog(
                        -sign * C[:, o],
                        A_ub=G,
                        b_ub=h,
                        bounds=[(0.0, 1.0)] * G.shape[1],
                        method="highs",
                    )
                    biggest = max(biggest, -res.fun + sign * d[o])
            sizes[name].append(biggest)
    for b in range(len(case.x)):
        assert sizes["reassure"][b] <= sizes["scale-shift"][b] + 1e-6
        assert sizes["reassure"][b] <= sizes["lagrangian"][b] + 1e-6


def test_lagrangian_steps_tighten_the_bound(
    case: Case, solutions: dict[str, PatchSolution]
) -> None:
    loose = LagrangianSolver(steps=0).solve(
        case.regions,
        torch.from_numpy(case.targets),
        margin=torch.full((3,), MARGIN, dtype=torch.float64),
    )
    tight = LagrangianSolver(steps=40, lr=0.03, scales="exact").solve(
        case.regions,
        torch.from_numpy(case.targets),
        margin=torch.full((3,), MARGIN, dtype=torch.float64),
    )
    exact = solutions["scale-shift"]  # exact LP shift: the smallest constant target push
    t = torch.from_numpy(case.targets).view(-1, 1)
    push_loose = loose.d.gather(1, t).view(-1)
    push_tight = tight.d.gather(1, t).view(-1)
    push_exact = (exact.d.gather(1, t).view(-1) - exact.d.min(dim=1).values).clamp_min(0)
    assert (push_tight <= push_loose).all()
    gap_tight = push_tight - push_exact
    gap_loose = push_loose - push_exact
    assert (gap_tight <= 0.2 * gap_loose).all(), (gap_tight, gap_loose)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_dual_bound_is_sound_for_any_multipliers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, m = 4, 6
    x0 = rng.random(d)
    G = rng.normal(size=(m, d))
    h = G @ x0 + rng.random(m)  # x0 strictly inside
    w = rng.normal(size=d)
    res = linprog(-w, A_ub=G, b_ub=h, bounds=[(0.0, 1.0)] * d, method="highs")
    lam = torch.from_numpy(rng.exponential(size=(1, 1, m)) * rng.integers(0, 2, size=(1, 1, m)))
    bound = dense_dual_bound(
        torch.from_numpy(G)[None],
        torch.from_numpy(h)[None],
        BOX,
        torch.from_numpy(w)[None, None],
        lam,
    )
    assert float(bound) >= -res.fun - 1e-9


def test_unknown_solver() -> None:
    with pytest.raises(PatchError, match="unknown solver 'simplex'"):
        make_solver("simplex")


def test_diagonal_row_scales_are_exact_on_the_first_layer_and_positive(case: Case) -> None:
    op = case.regions.operator(torch.float64)
    exact, cheap = op.row_norms(), op.row_scales()
    first = op.weights[0].shape[0]
    torch.testing.assert_close(cheap[:, :first], exact[:, :first])
    assert cheap.shape == exact.shape and (cheap >= 0).all()
    # deeper rows: the orthogonal-rows stand-in is within an order of magnitude here
    ratio = cheap[:, first:] / exact[:, first:].clamp_min(1e-12)
    assert (ratio[exact[:, first:] > 1e-9] > 0.1).all() and (ratio < 10).all()


@pytest.mark.parametrize("steps", [0, 5, 40])
def test_diagonal_scaled_solver_certifies_the_whole_region(case: Case, steps: int) -> None:
    """Normalisation is conditioning only: the diagonal stand-in is as sound as exact norms."""
    sol = LagrangianSolver(steps=steps, scales="diagonal").solve(
        case.regions,
        torch.from_numpy(case.targets),
        margin=torch.full((len(case.x),), MARGIN, dtype=torch.float64),
    )
    for b in range(len(case.x)):
        exact = exact_min_margin(case.head, case.x[b], int(case.targets[b]), None, sol.d[b].numpy())
        assert exact >= MARGIN - 1e-7
        assert float(sol.certified_margin[b]) <= exact + 1e-6


@pytest.mark.parametrize("name", ["scale-shift", "reassure"])
def test_exact_lp_multipliers_certify_the_lp_solvers_patches(
    case: Case, solutions: dict[str, PatchSolution], name: str
) -> None:
    """The region certificate of an LP-solver proof ships the LP's own multipliers
    (``region_duals(exact=True)``): with them the weak-duality bound reaches the margin the
    solver certified, which the Lagrangian ascent's multipliers need not (issue 11)."""
    from prune.proofs._duals import _lp_multipliers
    from prune.solvers._bounds import spec_objectives, spec_upper_bounds

    sol = solutions[name]
    t = torch.from_numpy(case.targets)
    W, _ = spec_objectives(case.regions, t, C=sol.C, d=sol.d)
    lam = torch.from_numpy(_lp_multipliers(case.regions, W, case.targets))
    upper = spec_upper_bounds(case.regions, t, lam, C=sol.C, d=sol.d)
    assert bool((-upper.max(dim=1).values >= MARGIN - 1e-6).all()), upper


def _spec_rows(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(case.targets)
    classes = case.head.classes
    keep = torch.arange(classes).expand(len(t), -1)
    keep = keep[keep != t.view(-1, 1)].view(len(t), classes - 1)
    coeffs = torch.zeros(len(t), classes - 1, classes, dtype=torch.float64)
    coeffs.scatter_(2, keep.unsqueeze(2), 1.0)
    coeffs.scatter_(2, t.view(-1, 1, 1).expand(-1, classes - 1, 1), -1.0)
    return t, keep, coeffs


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_float32_bound_is_sound_and_exact_on_the_largest_rows(case: Case, seed: int) -> None:
    """The solver's bound (float32 residual + rigorous rounding term, float64 again on every row
    that can be a region's largest) is never below the float64 weak-duality bound of the same
    multipliers, and its per-region maximum equals the float64 one."""
    from prune.solvers._bounds import dual_bound
    from prune.solvers._lagrangian import _float32_bound, _Objectives

    rng = np.random.default_rng(seed)
    _, _, coeffs = _spec_rows(case)
    obj = _Objectives.of(case.regions, coeffs)
    lam = torch.from_numpy(
        rng.exponential(size=(len(case.x), coeffs.shape[1], case.head.n_hidden))
        * rng.integers(0, 2, size=(len(case.x), coeffs.shape[1], case.head.n_hidden))
    )
    const = torch.from_numpy(rng.normal(size=coeffs.shape[:2]))
    exact = dual_bound(case.regions, coeffs @ case.regions.F1, lam) + const
    with pytest.MonkeyPatch.context() as patch:  # the batch path (3 regions are "a few rows")
        patch.setattr("prune.solvers._lagrangian._FEW_ROWS", 0)
        ours = obj.bound(case.regions, lam, const)
    torch.testing.assert_close(obj.bound(case.regions, lam, const), exact)  # the few-rows path
    assert bool((ours >= exact - 1e-9).all())
    torch.testing.assert_close(ours.max(dim=1).values, exact.max(dim=1).values)
    assert obj.top is not None
    mu = obj.top + lam * case.regions.sign.unsqueeze(1)
    value, error = _float32_bound(case.regions, mu, lam)
    assert bool(((value + const - exact).abs() <= error).all()) and bool((error > 0).all())


@pytest.mark.parametrize(
    "solver",
    [
        LagrangianSolver(gemm="bfloat16"),
        LagrangianSolver(gemm="float32", row_cut=0.0),
        LagrangianSolver(gemm="bfloat16", row_cut=0.0),
    ],
    ids=["bf16-active-rows", "fp32-all-rows", "bf16-all-rows"],
)
def test_lagrangian_precision_and_row_selection_certify(
    case: Case,
    solutions: dict[str, PatchSolution],
    solver: LagrangianSolver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bfloat16 products and tightening only the rows that can set delta (the batch path, forced
    here on 3 regions) change tightness only: every patch still certifies the whole region
    (exact LP), and the push stays within a few percent of the default (few-rows) solve's."""
    monkeypatch.setattr("prune.solvers._lagrangian._FEW_ROWS", 0)
    sol = solver.solve(
        case.regions,
        torch.from_numpy(case.targets),
        margin=torch.full((len(case.x),), MARGIN, dtype=torch.float64),
    )
    for b in range(len(case.x)):
        exact = exact_min_margin(case.head, case.x[b], int(case.targets[b]), None, sol.d[b].numpy())
        assert exact >= MARGIN - 1e-7
        assert float(sol.certified_margin[b]) <= exact + 1e-6
    reference = solutions["lagrangian"].d.abs().max(dim=1).values
    push = sol.d.abs().max(dim=1).values
    assert bool(((push - reference).abs() <= 0.05 * reference + 1e-6).all()), (push, reference)
    assert sol.multipliers is not None
    t = torch.from_numpy(case.targets)
    assert bool((sol.multipliers[torch.arange(len(t)), t] == 0).all())


def test_untightened_rows_keep_sound_starting_multipliers(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``row_cut=1`` only each region's largest starting row is tightened first; every
    row's shipped multipliers still give a weak-duality bound below ``delta - margin``."""
    from prune.solvers._bounds import spec_upper_bounds

    monkeypatch.setattr("prune.solvers._lagrangian._FEW_ROWS", 0)

    t, _, _ = _spec_rows(case)
    sol = LagrangianSolver(row_cut=1.0).solve(
        case.regions, t, margin=torch.full((len(case.x),), MARGIN, dtype=torch.float64)
    )
    assert sol.multipliers is not None
    upper = spec_upper_bounds(case.regions, t, sol.multipliers, d=sol.d)
    assert bool((-upper.max(dim=1).values >= MARGIN - 1e-9).all())


@pytest.mark.parametrize("dims", [(3, 40, 30, 4), (20, 6, 50, 3)])
def test_float32_rounding_term_covers_expanding_layers(
    tmp_path: Path, dims: tuple[int, ...]
) -> None:
    """The rounding term counts each backward product's inner dimension (a layer's output
    width), also where a layer is wider than its input: the float32 bound is within it of the
    float64 one for large multipliers."""
    from prune.solvers._bounds import box_dual
    from prune.solvers._lagrangian import _float32_bound

    head = load_model(random_mlp(tmp_path / "m.onnx", dims=dims, seed=7)).head
    rng = np.random.default_rng(2)
    regions = linearize(head, patterns_of(head, rng.random((5, head.input_dim))), box=BOX)
    lam = torch.from_numpy(rng.exponential(scale=1e3, size=(5, 4, head.n_hidden)))
    mu = torch.from_numpy(rng.normal(size=(5, 4, head.n_hidden))) * 1e3 + lam
    exact = box_dual(regions.operator().linear_transpose(mu), lam, regions.h, BOX)
    value, error = _float32_bound(regions, mu, lam)
    assert bool(((value - exact).abs() <= error).all()) and bool((error > 0).all())


def test_fewer_ascent_steps_certify_the_region_with_a_larger_push(case: Case) -> None:
    """``--solver-steps``: the box bound (0 steps) is looser than 6 steps, never unsound."""
    margins = torch.full((len(case.x),), MARGIN, dtype=torch.float64)
    targets = torch.from_numpy(case.targets)
    with single_thread():
        loose = make_solver("lagrangian", steps=0).solve(case.regions, targets, margin=margins)
        tight = make_solver("lagrangian", steps=6).solve(case.regions, targets, margin=margins)
    assert make_solver("lagrangian", steps=0).options()["steps"] == 0
    for b in range(len(case.x)):
        exact = exact_min_margin(
            case.head, case.x[b], int(case.targets[b]), None, loose.d[b].numpy()
        )
        assert exact >= MARGIN - 1e-7, (b, exact)
    assert float(loose.d.abs().sum()) >= float(tight.d.abs().sum()) - 1e-9


@pytest.mark.parametrize(
    ("name", "steps", "message"),
    [
        ("scale-shift", 3, "lagrangian solver only"),
        ("lagrangian", -1, "between 0 and"),
        ("lagrangian", 10**6, "between 0 and"),
    ],
)
def test_solver_steps_are_refused_where_they_mean_nothing(
    name: str, steps: int, message: str
) -> None:
    with pytest.raises(PatchError, match=message):
        make_solver(name, steps=steps)
