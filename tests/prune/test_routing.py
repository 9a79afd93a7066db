"""The routed gate: the routing tree's invariant, its gate against the activation gate, and its
ONNX form against the torch reference (one candidate per row, no batch coupling)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prune._routing import build_binary_tree, build_tree, pack_patterns, unpack_patterns
from prune.errors import PatchError
from prune.export import OUTPUT, export_patched
from prune.gates import RoutedGate, TreeGate, make_gate, routing_tree, sign_table, tree_attributes
from prune.model import OrtRunner, load_model
from prune.patched import PatchedHead, PatchSet, patch_bounds
from prune.regions import InputBox, box_from_data, linearize, patterns_of
from prune.solvers import LagrangianSolver
from tests.prune._engine_models import digits_work


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda p: st.tuples(st.integers(1, 40), st.integers(0, 2**32 - 1)).map(lambda t: (p, *t))
    )
)
def test_every_pattern_routes_to_its_patch(shape: tuple[int, int, int]) -> None:
    patches, hidden, seed = shape
    rng = np.random.default_rng(seed)
    active = rng.random((patches, hidden)) < rng.uniform(0.05, 0.95)
    active = np.unique(active, axis=0)
    rng.shuffle(active)
    for width in (1, 2, 4):
        tree = build_tree(active, width=width)
        assert tree.depth >= 1 and tree.child.shape == (len(tree.split), 2**width)
        np.testing.assert_array_equal(tree.route(active), np.arange(len(active)))
        nodes = np.arange(len(tree.split))
        leaves = (tree.child == nodes[:, None]).all(axis=1)
        assert sorted(tree.leaf[leaves].tolist()) == list(range(len(active)))
        # the depth stored implicitly in the tables is the tree's
        params = {
            "route/split": tree.split,
            "route/child": tree.child.reshape(-1),
            "route/leaf": tree.leaf,
        }
        assert routing_tree(params).depth == tree.depth
    np.testing.assert_array_equal(unpack_patterns(pack_patterns(active), hidden), active)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 80), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_binary_tree_routes_every_pattern_to_its_patch(
    patches: int, hidden: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    active = np.unique(rng.random((patches, hidden)) < rng.uniform(0.05, 0.95), axis=0)
    rng.shuffle(active)
    tree = build_binary_tree(active)
    count = len(tree.feature)
    assert count == 2 * len(active) - 1
    np.testing.assert_array_equal(tree.route(active), np.arange(len(active)))
    branch = tree.patch < 0
    own = np.arange(count)
    assert (tree.true[branch] > own[branch]).all() and (tree.false[branch] > own[branch]).all()
    assert sorted(tree.patch[~branch].tolist()) == list(range(len(active)))
    # a function of the patterns alone: the same patterns in the same order, the same tree
    again = build_binary_tree(active.copy())
    assert again.feature.tolist() == tree.feature.tolist() and again.depth == tree.depth


def test_binary_tree_depth_is_logarithmic_and_duplicates_are_refused() -> None:
    active = np.random.default_rng(0).random((4096, 128)) < 0.5
    assert build_binary_tree(active).depth <= 16
    with pytest.raises(PatchError, match="same activation pattern"):
        build_binary_tree(np.concatenate([active[:3], active[1:2]]))


def test_onnxruntime_walks_the_tree_as_the_reference_does_on_ties() -> None:
    """``BRANCH_GTE`` at threshold 0 is ``z >= 0``: 0 and -0 go to the true (active) side, the
    smallest subnormals to their own side, NaN to the false side, exactly as ``route`` does."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    active = np.unique(rng.random((60, 10)) < 0.5, axis=0)
    tree = build_binary_tree(active)
    node = helper.make_node(
        "TreeEnsembleRegressor", ["z"], ["y"], domain="ai.onnx.ml", **tree_attributes(tree)
    )
    graph = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    values = np.asarray([0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 3.0, -3.0, np.nan], np.float32)
    z = rng.choice(values, size=(4000, 10)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"z": z})[0][:, 0]
    np.testing.assert_array_equal(got, tree.route(z >= 0).astype(np.float32))


def test_depth_is_logarithmic_for_diverse_patterns() -> None:
    active = np.random.default_rng(0).random((4096, 128)) < 0.5
    assert build_tree(active, width=1).depth <= 16
    assert build_tree(active, width=4).depth <= 5


def test_identical_patterns_are_refused() -> None:
    active = np.array([[True, False, True], [False, False, True], [True, False, True]])
    with pytest.raises(PatchError, match="same activation pattern"):
        build_tree(active)


def test_sign_table_unpacks_bytes() -> None:
    table = sign_table()
    assert table.shape == (256, 8) and table.dtype == np.float32
    assert set(np.unique(table)) == {-1.0, 1.0}
    assert (((1.0 - table) / 2.0) @ (2.0 ** np.arange(8)) == np.arange(256)).all()


BOX = InputBox(0.0, 1.0, "data-range")


@pytest.fixture(scope="module")
def routed() -> tuple[object, PatchSet, np.ndarray, np.ndarray]:
    work = digits_work()
    model = load_model(work.raw)
    head = model.head
    _, first = np.unique(
        patterns_of(head, work.x_train[:200].astype(np.float64)), axis=0, return_index=True
    )
    forget = work.x_train[np.sort(first)[:12]].astype(np.float64)
    act = patterns_of(head, forget)
    logits, _ = head.forward(forget)
    targets = np.where(logits.argmax(1) == 0, 1, 0)
    sol = LagrangianSolver().solve(
        linearize(head, act, box=BOX),
        torch.from_numpy(targets),
        margin=torch.full((len(forget),), 0.2, dtype=torch.float64),
    )
    d = sol.d.numpy()
    patches = PatchSet("routed", 1000.0, act, d, None, patch_bounds(None, d, BOX), targets)
    data = np.concatenate([work.x_train, work.x_test]).astype(np.float64)
    return model, patches, forget, data


@pytest.fixture(params=["routed", "tree"])
def either(request, routed):  # type: ignore[no-untyped-def]
    """The routed fixture under each routed gate: the level-wise one and the tree."""
    model, patches, forget, data = routed
    return model, dataclasses.replace(patches, gate=request.param), forget, data


def test_routed_gate_is_the_activation_gate_of_one_candidate(either) -> None:  # type: ignore[no-untyped-def]
    model, patches, forget, data = either
    rng = np.random.default_rng(3)
    near = np.clip(
        np.repeat(forget, 50, axis=0) + rng.normal(scale=0.02, size=(600, data.shape[1])), 0, 1
    )
    x = torch.from_numpy(np.concatenate([data, forget, near]))
    activation = dataclasses.replace(patches, gate="activation")
    g_act = PatchedHead(model.head, activation, BOX, dtype=torch.float64).gates(x)
    g_rt = PatchedHead(model.head, patches, BOX, dtype=torch.float64).gates(x)
    assert ((g_rt > 0).sum(dim=1) <= 1).all()
    on = g_rt > 0
    torch.testing.assert_close(g_rt[on], g_act[on], rtol=0, atol=0)
    assert (g_rt <= g_act).all()
    # on its own region, a patch is fully on and every other patch is off
    n = len(data)
    own = g_rt[n : n + len(forget)]
    torch.testing.assert_close(own, torch.eye(len(forget), dtype=torch.float64), rtol=0, atol=0)
    assert ((g_rt[n + len(forget) :] > 0) & (g_rt[n + len(forget) :] < 1)).any(), "no band probe"


def test_routed_onnx_matches_torch_and_rows_are_independent(either) -> None:  # type: ignore[no-untyped-def]
    model, patches, forget, data = either
    box = box_from_data(data.astype(np.float32), input_space=True)
    raw = export_patched(model, patches, box)
    runner = OrtRunner(raw, outputs=[OUTPUT])
    x = np.concatenate([forget, data[:500]]).astype(np.float32)
    ort = runner.run(x, batch_size=256)[0]
    ref = PatchedHead(model.head, patches, box)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ort, ref, atol=1e-5, rtol=0)
    assert (ort[: len(forget)].argmax(1) == patches.targets).all()
    alone = np.concatenate([runner.run(x[i : i + 1])[0] for i in range(0, 40, 3)])
    np.testing.assert_array_equal(alone, ort[0:40:3])


def test_routed_affine_patch_gathers_its_C(either) -> None:  # type: ignore[no-untyped-def]
    model, patches, forget, data = either
    rng = np.random.default_rng(5)
    C = rng.normal(scale=0.01, size=(len(patches), data.shape[1], patches.d.shape[1]))
    affine = dataclasses.replace(patches, C=C, K=patch_bounds(C, patches.d, BOX))
    raw = export_patched(model, affine, BOX)
    x = np.concatenate([forget, data[:300]]).astype(np.float32)
    ort = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    ref = PatchedHead(model.head, affine, BOX, dtype=torch.float64)(
        torch.from_numpy(x.astype(np.float64))
    )
    np.testing.assert_allclose(ort, ref.numpy(), atol=1e-4, rtol=0)
    reference = PatchedHead(
        model.head, dataclasses.replace(affine, gate="activation"), BOX, dtype=torch.float64
    )
    inside = reference(torch.from_numpy(forget))
    np.testing.assert_allclose(ort[: len(forget)], inside.numpy(), atol=1e-4, rtol=0)


def test_routed_gate_refuses_duplicate_regions(either) -> None:  # type: ignore[no-untyped-def]
    model, patches, _, _ = either
    twice = np.concatenate([patches.active, patches.active[:1]])
    with pytest.raises(PatchError, match="same activation pattern"):
        make_gate(patches.gate).parameters(model.head, twice, BOX)


def test_tree_gate_imports_ai_onnx_ml_and_refuses_its_deprecated_version(routed) -> None:  # type: ignore[no-untyped-def]
    """The tree gate appends ai.onnx.ml 3 to a model that imports none, and refuses a model
    whose ai.onnx.ml version (5) deprecates TreeEnsembleRegressor; the original's opsets are
    kept in place."""
    import onnx

    model, patches, _, _ = routed
    tree = dataclasses.replace(patches, gate="tree")
    before = list(onnx.load_from_string(model.raw).opset_import)
    after = list(onnx.load_from_string(export_patched(model, tree, BOX)).opset_import)
    assert after[: len(before)] == before
    assert [(e.domain, e.version) for e in after[len(before) :]] == [("ai.onnx.ml", 3)]
    proto = onnx.load_from_string(model.raw)
    proto.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", 5))
    newer = dataclasses.replace(model, raw=proto.SerializeToString())
    with pytest.raises(PatchError, match=r"ai\.onnx\.ml opset 5"):
        export_patched(newer, tree, BOX)
    assert isinstance(make_gate("tree"), TreeGate) and isinstance(make_gate("tree"), RoutedGate)


@pytest.mark.parametrize(("gate", "sliced"), [("routed", "signs_flat"), ("tree", "table_flat")])
def test_routed_export_when_the_hidden_width_is_not_a_multiple_of_8(tmp_path, gate, sliced) -> None:  # type: ignore[no-untyped-def]
    """13 + 7 hidden neurons: the unpacked pattern is sliced to H (the format's Slice branch)."""
    from prune.data import load_dataset
    from prune.train import TrainConfig, export_onnx, train

    data = load_dataset("digits")
    net, result = train(data, TrainConfig(arch="mlp", hidden=(13, 7), epochs=2, seed=0))
    export_onnx(net, tmp_path / "m.onnx", input_shape=result.input_shape)
    model = load_model((tmp_path / "m.onnx").read_bytes())
    x = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    act = patterns_of(model.head, x[:300].astype(np.float64))
    _, first = np.unique(act, axis=0, return_index=True)
    rows = np.sort(first)[:20]
    d = np.zeros((len(rows), model.head.classes))
    d[np.arange(len(rows)), np.arange(len(rows)) % model.head.classes] = 3.0
    patches = PatchSet(
        gate,
        1000.0,
        act[rows],
        d,
        None,
        patch_bounds(None, d, BOX),
        np.zeros(len(rows), np.int64),
    )
    raw = export_patched(model, patches, BOX)
    names = {node.name for node in __import__("onnx").load_from_string(raw).graph.node}
    assert f"prune/patch/route/{sliced}" in names
    probe = np.concatenate([x[rows], x[300:600]])
    ort = OrtRunner(raw, outputs=[OUTPUT]).run(probe)[0]
    ref = PatchedHead(model.head, patches, BOX)(torch.from_numpy(probe)).detach().numpy()
    np.testing.assert_allclose(ort, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ort[: len(rows)] - model.logits(x[rows]), d, atol=1e-4)


@pytest.mark.parametrize(
    ("gate", "router"), [("routed", "GatherElements"), ("tree", "TreeEnsembleRegressor")]
)
def test_deep_routed_model_is_admitted_by_the_auditor_sandbox(gate: str, router: str) -> None:
    """A tree of two or more levels uses GatherElements (routed gate) or a TreeEnsembleRegressor
    (tree gate); the auditor's bounded-op admission (audit.sandbox) must accept the canonical
    graph, or no proof with it could verify."""
    from onnx import load_from_string

    from audit.sandbox._policy import admit

    work = digits_work()
    model = load_model(work.raw)
    act = patterns_of(model.head, work.x_train.astype(np.float64))
    _, first = np.unique(act, axis=0, return_index=True)
    rows = np.sort(first)[:120]
    d = np.zeros((len(rows), model.head.classes))
    d[:, 0] = 2.0
    patches = PatchSet(
        gate, 1000.0, act[rows], d, None, patch_bounds(None, d, BOX), np.zeros(len(rows), int)
    )
    if gate == "routed":
        assert routing_tree(patches.parameters(model.head, BOX)).depth >= 2
    else:
        assert build_binary_tree(act[rows]).depth >= 2
    raw = export_patched(model, patches, BOX)
    proto = load_from_string(raw)
    assert any(node.op_type == router for node in proto.graph.node)
    assert admit(proto, budget=1 << 30).per_sample > 0
    # the deep tree in onnxruntime routes as the reference does: every forget row gets its patch
    x = np.concatenate([work.x_train[rows], work.x_test]).astype(np.float32)
    ort = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    ref = PatchedHead(model.head, patches, BOX)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ort, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ort[: len(rows)] - model.logits(x[: len(rows)]), d, atol=1e-4)


def _reference_tree(
    active: np.ndarray, width: int
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The tree builder node by node (queue, one greedy choice per node, float sums): the slow
    reference the level-wise builder must match table for table."""
    from collections import deque

    def choose(act: np.ndarray) -> list[int]:
        groups = np.zeros(len(act), dtype=np.int64)
        chosen: list[int] = []
        a = act.astype(np.float64)
        for _ in range(width):
            onehot = np.zeros((int(groups.max()) + 1, len(act)))
            onehot[groups, np.arange(len(act))] = 1.0
            ones, sizes = onehot @ a, onehot.sum(axis=1, keepdims=True)
            cost = (ones**2 + (sizes - ones) ** 2).sum(axis=0)
            k = int(np.argmin(cost))
            if chosen and cost[k] >= float((sizes**2).sum()):
                k = chosen[-1]
            chosen.append(k)
            _, groups = np.unique(groups * 2 + act[:, k], return_inverse=True)
        return chosen

    codes = 1 << width
    split: list[list[int]] = []
    child: list[list[int]] = []
    leaf: list[int] = []
    pending: deque[tuple[int, np.ndarray]] = deque()

    def new_node(ids: np.ndarray) -> int:
        split.append([0] * width)
        child.append([len(split) - 1] * codes)
        leaf.append(0)
        pending.append((len(split) - 1, ids))
        return len(split) - 1

    new_node(np.arange(len(active)))
    while pending:
        node, ids = pending.popleft()
        if len(ids) == 1:
            leaf[node] = int(ids[0])
            if node == 0:
                child[0] = [new_node(ids)] * codes
            continue
        neurons = choose(active[ids])
        code = active[ids][:, neurons].astype(np.int64) @ (1 << np.arange(width))
        split[node] = neurons
        kids = {int(c): new_node(ids[code == c]) for c in np.unique(code)}
        child[node] = [kids.get(c, kids[min(kids)]) for c in range(codes)]
    return split, child, leaf


@pytest.mark.parametrize(
    ("patches", "hidden", "width", "density"),
    [(1, 9, 4, 0.5), (2, 5, 4, 0.5), (40, 12, 2, 0.3), (300, 64, 4, 0.5), (200, 32, 3, 0.1)],
)
def test_level_wise_tree_matches_the_node_by_node_reference(
    patches: int, hidden: int, width: int, density: float
) -> None:
    rng = np.random.default_rng(patches + hidden)
    active = rng.random((4 * patches, hidden)) < density
    _, first = np.unique(np.packbits(active, axis=1), axis=0, return_index=True)
    active = active[np.sort(first)[:patches]]
    tree = build_tree(active, width=width)
    split, child, leaf = _reference_tree(active, width)
    assert tree.split.tolist() == split
    assert tree.child.tolist() == child
    assert tree.leaf.tolist() == leaf
