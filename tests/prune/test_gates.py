from __future__ import annotations

import numpy as np
import pytest
import torch

from prune.errors import PatchError
from prune.gates import GATES, make_gate
from prune.model import PLHead, load_model
from prune.patched import PatchedHead, PatchSet, patch_bounds
from prune.regions import InputBox, linearize, patterns_of
from prune.solvers import LagrangianSolver
from tests.prune._engine_models import digits_work

BOX = InputBox(0.0, 1.0, "data-range")
N = 1000.0


@pytest.fixture(scope="module")
def setup() -> tuple[PLHead, dict[str, PatchedHead], np.ndarray, np.ndarray]:
    work = digits_work()
    head = load_model(work.raw).head
    forget = work.x_train[:6].astype(np.float64)
    act = patterns_of(head, forget)
    logits, _ = head.forward(forget)
    targets = np.where(logits.argmax(1) == 0, 1, 0)
    sol = LagrangianSolver().solve(
        linearize(head, act, box=BOX),
        torch.from_numpy(targets),
        margin=torch.full((6,), 0.2, dtype=torch.float64),
    )
    d = sol.d.numpy()
    models = {
        gate: PatchedHead(
            head,
            PatchSet(gate, N, act, d, None, patch_bounds(None, d, BOX), targets),
            BOX,
            dtype=torch.float64,
        )
        for gate in GATES
    }
    data = np.concatenate([work.x_train, work.x_test]).astype(np.float64)
    return head, models, forget, data


def test_both_gates_are_one_on_the_region(setup) -> None:  # type: ignore[no-untyped-def]
    head, models, forget, _ = setup
    rng = np.random.default_rng(0)
    for u, x0 in enumerate(forget):
        cand = np.clip(x0 + 1e-3 * rng.normal(size=(300, len(x0))), 0, 1)
        same = (patterns_of(head, cand) == patterns_of(head, x0[None])).all(axis=1)
        pts = torch.from_numpy(np.concatenate([x0[None], cand[same]]))
        for model in models.values():
            g = model.gates(pts)[:, u]
            assert torch.allclose(g, torch.ones_like(g), atol=1e-9)


def test_gates_agree_on_data(setup) -> None:  # type: ignore[no-untyped-def]
    _, models, _, data = setup
    x = torch.from_numpy(data)
    g_act = models["activation"].gates(x)
    g_dense = models["dense"].gates(x)
    assert torch.equal(g_act == 1, g_dense == 1)
    assert torch.equal(g_act > 0, g_dense > 0)
    torch.testing.assert_close(models["activation"](x), models["dense"](x), atol=1e-9, rtol=0)


def test_activation_band_is_tighter_where_the_rows_coincide(setup) -> None:  # type: ignore[no-untyped-def]
    """Where the pattern differs from the region's only in the last hidden layer, the dense
    gate's linearised rows equal the real pre-activations, and the activation gate (which sums
    violations) is never larger than the dense gate (which clamps each at 1/n)."""
    head, models, forget, _ = setup
    rng = np.random.default_rng(1)
    near = np.clip(
        np.repeat(forget, 400, axis=0) + rng.normal(scale=0.01, size=(2400, forget.shape[1])), 0, 1
    )
    pts = torch.from_numpy(near)
    a, d = models["activation"].gates(pts), models["dense"].gates(pts)
    last = head.hidden_sizes[-1]
    own = patterns_of(head, forget)
    mine = patterns_of(head, near)
    prefix_same = (mine[:, None, :-last] == own[None, :, :-last]).all(axis=2)  # [points, patches]
    sel = torch.from_numpy(prefix_same)
    assert (a[sel] <= d[sel] + 1e-12).all()
    in_band = sel & (d > 0) & (d < 1)
    assert in_band.any(), "no probe landed in a band: the comparison is vacuous"


def test_gates_are_zero_beyond_the_band(setup) -> None:  # type: ignore[no-untyped-def]
    """Off the region, once one sign constraint is violated by more than 1/n, both gates are 0."""
    head, models, forget, data = setup
    _, z = head.forward(data)
    x = torch.from_numpy(data)
    own = patterns_of(head, forget)
    for u in range(len(forget)):
        differ = (z >= 0) != own[u]
        first_layer = differ[:, : head.hidden_sizes[0]]
        clear = (np.abs(z[:, : head.hidden_sizes[0]]) * first_layer).max(axis=1) > 1.0 / N
        for model in models.values():
            assert (model.gates(x)[clear, u] == 0).all()


def test_unknown_gate() -> None:
    with pytest.raises(PatchError, match="unknown gate"):
        make_gate("sparse")
