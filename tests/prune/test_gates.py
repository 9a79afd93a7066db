"""Gate tests. The dense gate stores its constraint rows in float32 (they are ONNX
initializers) while the activation gate reads the network's own pre-activations, so comparisons
between the two carry a tolerance computed from that rounding (``row_rounding``) and from float64
evaluation (``float64_slack``), never a guessed constant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from prune.errors import PatchError
from prune.gates import GATES, make_gate
from prune.model import PLHead, load_model
from prune.patched import PatchedHead, PatchSet, patch_bounds
from prune.regions import InputBox, linearize, patterns_of
from prune.solvers import LagrangianSolver
from tests.prune._engine_models import digits_work, random_mlp

BOX = InputBox(0.0, 1.0, "data-range")
N = 1000.0
U64 = 2.0**-53


@dataclass
class Gated:
    """The patched head under each gate, plus the dense gate on the *exact* float64 rows."""

    head: PLHead
    models: dict[str, PatchedHead]
    exact_dense: PatchedHead
    active: NDArray[np.bool_]
    forget: NDArray[np.float64]


def gated(head: PLHead, forget: NDArray[np.float64], d: NDArray[np.float64]) -> Gated:
    act = patterns_of(head, forget)
    targets = np.zeros(len(forget), dtype=np.int64)
    models = {
        gate: PatchedHead(
            head,
            PatchSet(gate, N, act, d, None, patch_bounds(None, d, BOX), targets),
            BOX,
            dtype=torch.float64,
        )
        for gate in GATES
    }
    exact = PatchedHead(
        head,
        PatchSet("dense", N, act, d, None, patch_bounds(None, d, BOX), targets),
        BOX,
        dtype=torch.float64,
    )
    g, h = linearize(head, act, box=BOX).constraints()
    exact.params["A"] = g.reshape(-1, head.input_dim).T.contiguous()
    exact.params["b"] = h.reshape(-1).contiguous()
    return Gated(head, models, exact, act, forget)


def row_rounding(setup: Gated, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``n sum_i |e_i(x)|`` per point and patch, ``e_i`` the change of row i's slack
    ``h_i - G_i x`` when ``G, h`` are rounded to float32 for the ONNX initializers. The dense gate
    is n-Lipschitz in each slack (l1), so this bounds how far the stored rows move it."""
    g, h = (t.numpy() for t in linearize(setup.head, setup.active, box=BOX).constraints())
    dg = g.astype(np.float32).astype(np.float64) - g
    dh = h.astype(np.float32).astype(np.float64) - h
    e = dh[None] - np.einsum("nd,phd->nph", x, dg)
    return np.asarray(N * np.abs(e).sum(axis=2))


def float64_slack(setup: Gated, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """A bound on the float64 evaluation error of both gates at ``x``, broadcast to [N, P]. Every
    pre-activation, and every linearised row evaluated at ``x``, is a chain of dot products of
    total length <= k = d + H + 2, off by at most gamma_k = k u / (1 - k u) times the magnitude
    ``M_j`` of the absolute-value forward pass (``|G_j| |x| + |h_j| <= M_j`` too); each gate is
    n-Lipschitz (l1) in them; the gates' own sums of H terms in [0, 1] add (H + 2) gamma_H."""
    head = setup.head
    k = head.input_dim + head.n_hidden + 2
    gamma = k * U64 / (1 - k * U64)
    m, total = np.abs(x), np.zeros(len(x))
    for layer in head.layers[:-1]:
        m = m @ np.abs(layer.weight.T) + np.abs(layer.bias)
        total += m.sum(axis=1)
    arith = (head.n_hidden + 2) * gamma
    slack = 2 * N * gamma * total + 2 * arith
    return np.asarray(np.repeat(slack[:, None], len(setup.forget), axis=1))


def digits_setup() -> tuple[Gated, NDArray[np.float64]]:
    work = digits_work()
    head = load_model(work.raw).head
    forget = work.x_train[:6].astype(np.float64)
    logits, _ = head.forward(forget)
    targets = np.where(logits.argmax(1) == 0, 1, 0)
    sol = LagrangianSolver().solve(
        linearize(head, patterns_of(head, forget), box=BOX),
        torch.from_numpy(targets),
        margin=torch.full((6,), 0.2, dtype=torch.float64),
    )
    data = np.concatenate([work.x_train, work.x_test]).astype(np.float64)
    return gated(head, forget, sol.d.numpy()), data


def fixed_weights_setup(tmp: Path) -> tuple[Gated, NDArray[np.float64]]:
    """Seeded random weights (the same on every machine): a model where the float32 rows put the
    activation gate above the dense one (found by a seed scan; see the last test)."""
    head = load_model(random_mlp(tmp / "m.onnx", dims=(8, 16, 16, 4), seed=4)).head
    rng = np.random.default_rng(4)
    forget = rng.uniform(0, 1, size=(4, 8))
    d = np.zeros((4, 4))
    d[:, 0] = 1.0
    return gated(head, forget, d), rng.uniform(0, 1, size=(500, 8))


@pytest.fixture(scope="module", params=["digits", "fixed-weights"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Gated, NDArray[np.float64]]:
    if request.param == "digits":
        return digits_setup()
    return fixed_weights_setup(tmp_path_factory.mktemp("gates"))


def probes(s: Gated, scale: float) -> NDArray[np.float64]:
    rng = np.random.default_rng(1)
    n = 400 * len(s.forget)
    noise = rng.normal(scale=scale, size=(n, s.forget.shape[1]))
    return np.asarray(np.clip(np.repeat(s.forget, 400, axis=0) + noise, 0, 1))


def last_layer_only(s: Gated, x: NDArray[np.float64]) -> torch.Tensor:
    """[points, patches]: the point's pattern equals the patch's on every layer but the last."""
    last = s.head.hidden_sizes[-1]
    mine = patterns_of(s.head, x)
    return torch.from_numpy((mine[:, None, :-last] == s.active[None, :, :-last]).all(axis=2))


def test_both_gates_are_one_on_the_region(setup) -> None:  # type: ignore[no-untyped-def]
    s, _ = setup
    rng = np.random.default_rng(0)
    for u, x0 in enumerate(s.forget):
        cand = np.clip(x0 + 1e-3 * rng.normal(size=(300, len(x0))), 0, 1)
        same = (patterns_of(s.head, cand) == s.active[u]).all(axis=1)
        x = np.concatenate([x0[None], cand[same]])
        slack = float64_slack(s, x)[:, u]
        pts = torch.from_numpy(x)
        assert (s.models["activation"].gates(pts)[:, u].numpy() >= 1 - slack).all()
        assert (s.exact_dense.gates(pts)[:, u].numpy() >= 1 - slack).all()
        stored = s.models["dense"].gates(pts)[:, u].numpy()
        assert (stored >= 1 - slack - row_rounding(s, x)[:, u]).all()


def test_gates_agree_on_data(setup) -> None:  # type: ignore[no-untyped-def]
    """On real data no point falls where the two bands differ: the gates agree up to the stored
    rows' rounding, and so do the patched outputs (each patch is K-Lipschitz in its gate)."""
    s, data = setup
    x = torch.from_numpy(data)
    tol = row_rounding(s, data) + float64_slack(s, data)
    g_act = s.models["activation"].gates(x).numpy()
    g_dense = s.models["dense"].gates(x).numpy()
    assert (np.abs(g_act - g_dense) <= tol).all()
    k = s.models["dense"].params["K"].numpy().reshape(-1)
    out_tol = (tol * k[None]).sum(axis=1, keepdims=True) + float64_slack(s, data)[:, :1]
    diff = (s.models["activation"](x) - s.models["dense"](x)).abs().numpy()
    assert (diff <= out_tol).all()


def test_activation_band_is_tighter_where_the_rows_coincide(setup) -> None:  # type: ignore[no-untyped-def]
    """The docstring's claim, in exact rows: where the pattern differs from the region's only in
    the last hidden layer, the dense rows equal the real pre-activations and the activation gate
    (which sums violations) is never above the dense gate (which clamps each at 1/n)."""
    s, _ = setup
    near = probes(s, 0.01)
    pts = torch.from_numpy(near)
    a = s.models["activation"].gates(pts).numpy()
    d = s.exact_dense.gates(pts).numpy()
    sel = last_layer_only(s, near).numpy()
    slack = float64_slack(s, near)
    assert (a[sel] <= d[sel] + slack[sel]).all()
    assert (sel & (d > 0) & (d < 1)).any(), "no probe landed in a band: the comparison is vacuous"


def test_stored_rows_move_the_dense_gate_by_their_rounding_only(setup) -> None:  # type: ignore[no-untyped-def]
    s, _ = setup
    near = probes(s, 0.01)
    pts = torch.from_numpy(near)
    stored = s.models["dense"].gates(pts).numpy()
    exact = s.exact_dense.gates(pts).numpy()
    assert (np.abs(stored - exact) <= row_rounding(s, near) + float64_slack(s, near)).all()


def test_stored_rows_can_put_the_activation_gate_above_the_dense_one(tmp_path: Path) -> None:
    """Why the executed comparison needs ``row_rounding``: with one violated row both gates are
    equal in exact arithmetic, and the float32 rows decide the sign of the difference (this is
    the failure of the old test's ``a <= d + 1e-12`` on a freshly trained model)."""
    s, _ = fixed_weights_setup(tmp_path)
    near = probes(s, 0.003)
    pts = torch.from_numpy(near)
    a = s.models["activation"].gates(pts).numpy()
    d = s.models["dense"].gates(pts).numpy()
    sel = last_layer_only(s, near).numpy()
    slack = float64_slack(s, near)
    assert (sel & (a > d + slack)).any()
    assert (a[sel] <= d[sel] + row_rounding(s, near)[sel] + slack[sel]).all()


def test_gates_are_zero_beyond_the_band(setup) -> None:  # type: ignore[no-untyped-def]
    """Off the region, once one first-layer sign constraint is violated by more than 1/n, both
    gates are exactly 0 (first-layer rows are the float32 weights themselves: no rounding)."""
    s, data = setup
    _, z = s.head.forward(data)
    x = torch.from_numpy(data)
    first = s.head.hidden_sizes[0]
    slack = float64_slack(s, data)[:, 0]
    for u in range(len(s.forget)):
        differ = (z >= 0) != s.active[u]
        violation = (np.abs(z[:, :first]) * differ[:, :first]).max(axis=1)
        clear = violation * N > 1.0 + slack
        for model in s.models.values():
            assert (model.gates(x)[clear, u] == 0).all()


def test_unknown_gate() -> None:
    with pytest.raises(PatchError, match="unknown gate"):
        make_gate("sparse")
