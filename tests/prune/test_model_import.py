from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from prune.errors import ModelImportError
from prune.model import OrtRunner, load_model
from prune.train import export_onnx
from tests.prune._engine_models import digits_work, graph_model, random_mlp

RNG = np.random.default_rng(0)


def _head_matches_runtime(raw: bytes, x: np.ndarray, *, cut: str | None = None) -> None:
    model = load_model(raw, cut=cut)
    head = model.head
    outs = OrtRunner(raw, outputs=[*head.hidden, head.output]).run(x)
    logits, z = head.forward(model.cut_values(x).astype(np.float64))
    np.testing.assert_allclose(logits, outs[-1], atol=1e-4, rtol=1e-5)
    z_rt = np.concatenate([o.reshape(len(x), -1) for o in outs[:-1]], axis=1)
    np.testing.assert_allclose(z, z_rt, atol=1e-4, rtol=1e-5)


def test_mlp_head_is_the_whole_model(tmp_path: Path) -> None:
    raw = random_mlp(tmp_path / "m.onnx", dims=(6, 8, 5, 4))
    model = load_model(raw)
    assert model.input_space and model.head.cut == "input"
    assert model.head.hidden_sizes == (8, 5) and model.head.classes == 4
    assert len(model.head.hidden) == 2
    _head_matches_runtime(raw, RNG.random((50, 6), dtype=np.float32))


def test_matmul_add_graph_with_constant_nodes() -> None:
    w1 = RNG.normal(size=(4, 5)).astype(np.float32)
    b1 = RNG.normal(size=(5,)).astype(np.float32)
    w2 = RNG.normal(size=(5, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["a"], name="mm1"),
        helper.make_node("Add", ["b1", "a"], ["z1"], name="add1"),  # constant on the left
        helper.make_node("Relu", ["z1"], ["r1"], name="relu1"),
        helper.make_node(
            "Constant",
            [],
            ["w2"],
            name="cw2",
            value=helper.make_tensor("w2v", 1, [5, 3], w2.ravel()),
        ),
        helper.make_node("Gemm", ["r1", "w2"], ["logits"], name="gemm2", alpha=0.5),
    ]
    raw = graph_model(nodes, {"w1": w1, "b1": b1})
    model = load_model(raw)
    assert model.head.hidden == ("z1",)
    _head_matches_runtime(raw, RNG.random((20, 4), dtype=np.float32))


def test_conv_in_the_head_becomes_a_dense_matrix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    export_onnx(net, tmp_path / "c.onnx", input_shape=(1, 8, 8))
    raw = (tmp_path / "c.onnx").read_bytes()
    model = load_model(raw)
    assert model.head.cut_shape == (1, 8, 8) and model.head.input_dim == 64
    assert model.head.hidden_sizes == (48, 5)
    _head_matches_runtime(raw, RNG.random((10, 1, 8, 8), dtype=np.float32))


def test_cnn_defaults_to_the_feature_cut_and_names_the_blocking_node(tmp_path: Path) -> None:
    work = digits_work("cnn")
    model = load_model(work.raw)
    assert model.head.cut == "features" and not model.input_space
    _head_matches_runtime(work.raw, work.x_test[:30])
    with pytest.raises(ModelImportError, match=r"max pooling .* MaxPool \(MaxPool node '.*'\)"):
        load_model(work.raw, cut="input")


@pytest.mark.parametrize(
    ("act", "message"),
    [
        ("Sigmoid", r"non-piecewise-linear activation Sigmoid \(Sigmoid node 'act'\)"),
        ("Abs", r"unsupported op Abs \(Abs node 'act'\)"),
    ],
)
def test_non_piecewise_linear_head_is_refused(act: str, message: str) -> None:
    w = RNG.normal(size=(3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w"], ["h"], name="g", transB=1),
        helper.make_node(act, ["h"], ["logits"], name="act"),
    ]
    with pytest.raises(ModelImportError, match=message):
        load_model(graph_model(nodes, {"w": w}))


def test_softmax_at_the_end_is_the_output_tail() -> None:
    """A final Softmax is the tail, not part of the head: the logits are its input (here the
    model is affine, so its one region is the whole input box)."""
    w = RNG.normal(size=(3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w"], ["h"], name="g", transB=1),
        helper.make_node("Softmax", ["h"], ["logits"], name="act"),
    ]
    model = load_model(graph_model(nodes, {"w": w}))
    assert model.head.output == "h" and model.head.hidden == () and len(model.tail) == 1


def _residual_nodes(join: str = "Add") -> list[object]:
    """``logits = W3 relu(x + W2 relu(W1 x)) `` with a LeakyRelu in front: the skip carries the
    LeakyRelu output (a breakpoint tensor's activation) across one hidden layer."""
    return [
        helper.make_node("Gemm", ["input", "w0"], ["a"], name="g0", transB=1),
        helper.make_node("LeakyRelu", ["a"], ["x"], name="lr", alpha=0.1),
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="g1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="r1"),
        helper.make_node("Gemm", ["r", "w2"], ["f"], name="g2", transB=1),
        helper.make_node(join, ["x", "f"], ["s"], name="join"),
        helper.make_node("Relu", ["s"], ["t"], name="r2"),
        helper.make_node("Gemm", ["t", "w3"], ["logits"], name="g3", transB=1),
    ]


def _residual_weights() -> dict[str, np.ndarray]:
    return {
        "w0": RNG.normal(size=(5, 4)).astype(np.float32),
        "w1": RNG.normal(size=(6, 5)).astype(np.float32),
        "w2": RNG.normal(size=(5, 6)).astype(np.float32),
        "w3": RNG.normal(size=(3, 5)).astype(np.float32),
    }


@pytest.mark.parametrize("join", ["Add", "Sub"])
def test_residual_head_is_layered_with_carried_units(join: str) -> None:
    """A residual join after the cut: hidden layer 2 holds the carried ``x`` (slope 1; it is
    produced before ``h``) and the branch's breakpoint ``h``; the dense head equals onnxruntime
    on every tensor."""
    raw = graph_model(_residual_nodes(join), _residual_weights())
    model = load_model(raw)
    head = model.head
    assert model.input_space
    assert head.hidden == ("a", "x", "h", "s") and head.hidden_sizes == (5, 11, 5)
    np.testing.assert_array_equal(head.slope(0), np.full(5, float(np.float32(0.1))))
    np.testing.assert_array_equal(head.slope(1), np.r_[np.ones(5), np.zeros(6)])
    x = RNG.random((40, 4), dtype=np.float32)
    names = ["a", "h", "x", "s", "logits"]
    outs = dict(zip(names, OrtRunner(raw, outputs=names).run(x), strict=True))
    logits, z = head.forward(x.astype(np.float64))
    np.testing.assert_allclose(logits, outs["logits"], atol=1e-4, rtol=1e-5)
    z_rt = np.concatenate([outs[n] for n in head.hidden], axis=1)
    np.testing.assert_allclose(z, z_rt, atol=1e-4, rtol=1e-5)


def test_product_of_two_computed_tensors_is_refused() -> None:
    nodes = _residual_nodes("Mul")
    with pytest.raises(ModelImportError, match="combines 2 computed tensors"):
        load_model(graph_model(nodes, _residual_weights()), cut="x")


def test_cut_inside_a_residual_block_is_refused() -> None:
    """A cut on the branch (``r``) is bypassed by the skip from ``x``, computed before it."""
    with pytest.raises(ModelImportError, match="skip connection around it"):
        load_model(graph_model(_residual_nodes(), _residual_weights()), cut="r")


def test_transposed_input_gemm_is_refused() -> None:
    w = RNG.normal(size=(4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w"], ["h"], name="gt", transA=1),
        helper.make_node("Relu", ["h"], ["logits"], name="r"),
    ]
    raw = graph_model(nodes, {"w": w}, inputs=("input", [4, 4]), output=("logits", [4, 3]))
    with pytest.raises(ModelImportError, match="Gemm node 'gt' cannot be patched"):
        load_model(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"definitely not a protobuf \xff\xfe", "not an ONNX model"),
    ],
)
def test_unreadable_model_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(ModelImportError, match=message):
        load_model(raw)


def test_unknown_cut_and_old_opset(tmp_path: Path) -> None:
    raw = random_mlp(tmp_path / "m.onnx")
    with pytest.raises(ModelImportError, match="no tensor named 'nope'"):
        load_model(raw, cut="nope")
    w = RNG.normal(size=(3, 4)).astype(np.float32)
    old = graph_model(
        [helper.make_node("Gemm", ["input", "w"], ["logits"], transB=1)], {"w": w}, opset=11
    )
    with pytest.raises(ModelImportError, match="opset 11"):
        load_model(old)


def test_float32_error_bound_covers_the_verifiers_on_carried_units() -> None:
    """The owner pays the float32 term of the verifier's region certificate in its margin, so
    its bound must be at least the verifier's, also through leaky and carried (slope 1)
    units, which pass their value when inactive."""
    from audit.verify._affine import parse_head
    from audit.verify._certificate import float32_errors
    from audit.verify._graph import find_head
    from prune.proofs._duals import float32_logit_error
    from prune.regions import InputBox

    raw = graph_model(_residual_nodes(), _residual_weights())
    head = load_model(raw).head
    x = RNG.uniform(-1, 1, size=(64, 4))
    _, z = head.forward(x)
    active = z >= 0
    assert (~active[:, 5:10]).any()  # some carried units are inactive
    box = InputBox(low=-1.0, high=1.0, source="data-range")
    ours = float32_logit_error(head, active, box)
    import onnx

    proto = onnx.load_from_string(raw)
    theirs, _ = float32_errors(
        parse_head(proto, find_head(proto, "input")),
        active.astype(np.float64),
        1.0,
        served_pattern=False,
    )
    assert (ours >= theirs * (1 - 1e-9)).all()
