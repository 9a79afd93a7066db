from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from prune.export import FORMAT, OUTPUT, PREFIX, export_patched
from prune.formats import patch_parameter_digest
from prune.model import ImportedModel, OrtRunner, load_model
from prune.patched import PatchedHead, PatchSet, patch_bounds
from prune.regions import InputBox, box_from_data, linearize
from prune.solvers import make_solver
from tests.prune._engine_models import DigitsWork, digits_work, single_thread


def _patches(
    model: ImportedModel, x: np.ndarray, box: InputBox, *, solver: str, gate: str
) -> PatchSet:
    head = model.head
    cut = model.cut_values(x).astype(np.float64)
    z = np.concatenate(
        [o.reshape(len(x), -1) for o in OrtRunner(model.raw, outputs=list(head.hidden)).run(x)],
        axis=1,
    )
    act = z >= 0
    assert len(np.unique(act, axis=0)) == len(x), "pick forget points in distinct regions"
    logits, _ = head.forward(cut)
    masked = logits.copy()
    masked[np.arange(len(x)), logits.argmax(1)] = -np.inf
    targets = masked.argmax(1)
    sol = make_solver(solver).solve(
        linearize(head, act, box=box),
        torch.from_numpy(targets),
        margin=torch.full((len(x),), 0.2, dtype=torch.float64),
    )
    C = None if sol.C is None else sol.C.numpy()
    d = sol.d.numpy()
    return PatchSet(gate, 1000.0, act, d, C, patch_bounds(C, d, box), targets)


@pytest.fixture(scope="module")
def mlp() -> tuple[DigitsWork, ImportedModel, InputBox]:
    work = digits_work()
    model = load_model(work.raw)
    return work, model, box_from_data(work.x_train, input_space=True)


def _check_original_kept(original: bytes, patched: bytes) -> onnx.ModelProto:
    a = onnx.load_from_string(original)
    b = onnx.load_from_string(patched)
    onnx.checker.check_model(b)
    n = len(a.graph.node)
    assert [x.SerializeToString() for x in b.graph.node[:n]] == [
        x.SerializeToString() for x in a.graph.node
    ]
    k = len(a.graph.initializer)
    assert [x.SerializeToString() for x in b.graph.initializer[:k]] == [
        x.SerializeToString() for x in a.graph.initializer
    ]
    assert all(x.name.startswith(PREFIX) for x in b.graph.initializer[k:])
    assert all(x.name.startswith(PREFIX) for x in b.graph.node[n:])
    assert [o.name for o in b.graph.output] == [OUTPUT]
    assert list(b.graph.input) == list(a.graph.input)
    assert list(b.opset_import) == list(a.opset_import)
    return b


@pytest.fixture(scope="module")
def solved(mlp) -> dict[str, PatchSet]:  # type: ignore[no-untyped-def]
    work, model, box = mlp
    with single_thread():
        return {
            "lagrangian": _patches(
                model, work.x_train[:4], box, solver="lagrangian", gate="activation"
            ),
            "reassure": _patches(
                model, work.x_train[:2], box, solver="reassure", gate="activation"
            ),
        }


@pytest.mark.parametrize("gate", ["activation", "dense", "routed"])
@pytest.mark.parametrize("solver", ["lagrangian", "reassure"])
def test_export_keeps_the_original_and_matches_torch(mlp, solved, gate: str, solver: str) -> None:  # type: ignore[no-untyped-def]
    work, model, box = mlp
    patches = dataclasses.replace(solved[solver], gate=gate)
    k = len(patches)
    assert (patches.C is None) == (solver == "lagrangian")
    raw = export_patched(model, patches, box)
    proto = _check_original_kept(work.raw, raw)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["prune.format"] == FORMAT and meta["prune.gate"] == gate
    assert meta["prune.cut"] == "input" and meta["prune.original_output"] == "logits"
    assert meta["prune.hidden"] == ",".join(model.head.hidden)
    names = {t.name for t in proto.graph.initializer}
    assert {PREFIX + k for k in ("n", "K", "d")} <= names
    assert (PREFIX + "C" in names) == (solver == "reassure")
    # constant delta*e_t patches take the one-MatMul form of sum_u h_u; others the general one
    ops = {node.name: node.op_type for node in proto.graph.node}
    linear_op, general_op = ("Mul", "Sub") if gate == "routed" else ("MatMul", "ReduceSum")
    assert ops[PREFIX + "h_sum"] == (linear_op if solver == "lagrangian" else general_op)
    assert len(patch_parameter_digest(raw)) == 64
    x = np.concatenate([work.x_train[:k], work.x_test])
    ort = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    ref = PatchedHead(model.head, patches, box)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ort, ref, atol=1e-5, rtol=0)
    # the forget points are moved to their targets
    assert (ort[:k].argmax(1) == patches.targets).all()


@pytest.mark.parametrize("gate", ["activation", "dense", "routed"])
def test_outputs_outside_the_supports_are_unchanged(mlp, solved, gate: str) -> None:  # type: ignore[no-untyped-def]
    work, model, box = mlp
    patches = dataclasses.replace(solved["lagrangian"], gate=gate)
    raw = export_patched(model, patches, box)
    x = work.x_test
    gates = PatchedHead(model.head, patches, box, dtype=torch.float64).gates(torch.from_numpy(x))
    off = (gates == 0).all(dim=1).numpy()
    assert off.sum() > 0.9 * len(x)
    before = model.logits(x)
    after = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    np.testing.assert_array_equal(after[off], before[off])


@pytest.mark.parametrize("gate", ["activation", "routed"])
def test_feature_space_export_of_a_cnn(gate: str) -> None:
    work = digits_work("cnn")
    model = load_model(work.raw)
    box = box_from_data(model.cut_values(work.x_train), input_space=False)
    z = OrtRunner(work.raw, outputs=list(model.head.hidden)).run(work.x_train[:50])[0]
    _, first = np.unique(z.reshape(50, -1) >= 0, axis=0, return_index=True)
    forget = work.x_train[np.sort(first)[:3]]
    patches = _patches(model, forget, box, solver="lagrangian", gate=gate)
    raw = export_patched(model, patches, box)
    _check_original_kept(work.raw, raw)
    x = work.x_test[:200]
    ort = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    ref = PatchedHead(model.head, patches, box)(torch.from_numpy(model.cut_values(x))).detach()
    np.testing.assert_allclose(ort, ref.numpy(), atol=1e-5, rtol=0)
    after = OrtRunner(raw, outputs=[OUTPUT]).run(forget)[0]
    assert (after.argmax(1) == patches.targets).all()
