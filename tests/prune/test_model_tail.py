"""The owner's side of ``structure.tail``: a model whose output tail is not a faithful function of
the logits is refused at import with one line naming the node, and ``prune unlearn`` exits
non-zero without a traceback or a half-written proof; the tails exporters emit import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from prune.cli import cli as prune_cli
from prune.errors import ModelImportError
from prune.model import load_model

RNG = np.random.default_rng(3)
D, H, C = 6, 8, 4


def _model(
    tail: list[onnx.NodeProto], inits: dict[str, np.ndarray], label: list[str | int]
) -> bytes:
    """``x [batch, 6] -> Gemm -> Relu -> Gemm -> logits [batch, 4] -> tail -> label``."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="g1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], name="g2"),
        *tail,
    ]
    weights = {
        "w1": RNG.normal(size=(D, H)).astype(np.float32),
        "w2": RNG.normal(size=(H, C)).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, label)],
        initializer=[numpy_helper.from_array(v, k) for k, v in {**weights, **inits}.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    return bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())


def _lookup(classes: np.ndarray) -> bytes:
    """skl2onnx's label: Softmax -> ArgMax -> ArrayFeatureExtractor(classes) -> Reshape [-1]."""
    tail = [
        helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["p"], ["idx"], name="argmax", axis=1),
        helper.make_node(
            "ArrayFeatureExtractor", ["classes", "idx"], ["afe"], domain="ai.onnx.ml", name="afe"
        ),
        helper.make_node("Reshape", ["afe", "flat"], ["label"], name="flat"),
    ]
    inits = {"classes": classes, "flat": np.array([-1], np.int64)}
    return _model(tail, inits, ["batch"])


def _after_softmax(op: str) -> bytes:
    tail = [
        helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=1),
        helper.make_node(op, ["p"], ["q"], name="tamper"),
        helper.make_node("ArgMax", ["q"], ["label"], name="argmax", axis=1),
    ]
    return _model(tail, {}, ["batch", 1])


def _softmax_over_batch() -> bytes:
    tail = [
        helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=0),
        helper.make_node("ArgMax", ["p"], ["label"], name="argmax", axis=1),
    ]
    return _model(tail, {}, ["batch", 1])


def _batch_size_trigger() -> bytes:
    tail = [
        helper.make_node("ArgMax", ["logits"], ["first"], name="argmax", axis=1),
        helper.make_node("Shape", ["logits"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["rows"], name="rows", axis=0),
        helper.make_node("Equal", ["rows", "five"], ["on"], name="equal"),
        helper.make_node("Where", ["on", "zero", "first"], ["label"], name="where"),
    ]
    inits = {"zero": np.array(0, np.int64), "five": np.array(5, np.int64)}
    return _model(tail, inits, ["batch", 1])


def test_a_distinct_label_lookup_imports() -> None:
    model = load_model(_lookup(np.array([7, 3, 5, 1], np.int64)))
    assert len(model.tail) == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (lambda: _lookup(np.array([0, 1, 2, 0], np.int64)), "afe.*not pairwise distinct"),
        (lambda: _lookup(np.arange(C + 1, dtype=np.int64)), "afe.*not \\[4\\]"),
        (lambda: _after_softmax("Neg"), "tamper.*Neg is not in the faithful-tail table"),
        (_softmax_over_batch, "softmax.*axis 0"),
        (_batch_size_trigger, "shape.*Shape"),
    ],
)
def test_an_unfaithful_tail_is_refused_at_import(raw: object, message: str) -> None:
    assert callable(raw)
    with pytest.raises(ModelImportError, match=message):
        load_model(raw())


def test_prune_unlearn_refuses_an_unfaithful_tail_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_lookup(np.array([0, 1, 2, 0], np.int64)))
    np.savez(
        tmp_path / "train.npz",
        x=RNG.normal(size=(40, D)).astype(np.float32),
        y=RNG.integers(0, C, size=40).astype(np.int64),
    )
    (tmp_path / "forget.txt").write_text("3\n")
    out = tmp_path / "proof"
    res = CliRunner().invoke(
        prune_cli,
        [
            "unlearn", str(path), "--train", str(tmp_path / "train.npz"),
            "--forget-indices", str(tmp_path / "forget.txt"), "--out", str(out), "--quiet",
        ],
    )  # fmt: skip
    assert res.exit_code != 0
    assert "Traceback" not in res.output and "not pairwise distinct" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1, res.output
    assert not out.exists()
