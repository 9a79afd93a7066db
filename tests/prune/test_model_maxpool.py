"""MaxPool rewritten into selection convolutions and a ReLU tournament (prune/model/_maxpool.py),
applied on import only when the model has no valid cut as exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from prune.model import load_model, read_model
from prune.model._maxpool import expand_maxpools

RNG = np.random.default_rng(3)


def _cnn(*, pads: list[int] | None = None, relu_after_pool: bool = False) -> onnx.ModelProto:
    """x [N, 1, 6, 6] -> Conv(2) -> Relu -> MaxPool 2x2/2 -> (Relu) -> Flatten -> Gemm(3)."""
    pool_out = 4 if pads else 3
    nodes = [
        helper.make_node("Conv", ["x", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node(
            "MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=pads or [0] * 4
        ),
    ]
    last = "p"
    if relu_after_pool:
        nodes.append(helper.make_node("Relu", ["p"], ["pr"]))
        last = "pr"
    nodes += [
        helper.make_node("Flatten", [last], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(RNG.normal(size=(2, 1, 3, 3)).astype(np.float32), "k"),
        numpy_helper.from_array(RNG.normal(size=2).astype(np.float32), "kb"),
        numpy_helper.from_array(
            RNG.normal(size=(3, 2 * pool_out * pool_out)).astype(np.float32), "w"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(raw: bytes, x: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_the_rewrite_computes_the_pooling(tmp_path: Path) -> None:
    model = _cnn()
    rewritten, count = expand_maxpools(model, (1, 6, 6))
    assert count == 1
    assert not any(n.op_type == "MaxPool" for n in rewritten.graph.node)
    x = RNG.normal(size=(32, 1, 6, 6)).astype(np.float32)
    want = _run(model.SerializeToString(), x)
    got = _run(rewritten.SerializeToString(), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_without_a_cut_gets_the_pooling_in_its_head(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_cnn().SerializeToString())
    raw, changed = read_model(path)
    assert changed
    imported = load_model(raw)
    assert imported.input_space  # the whole model is the head
    ops = {n.op_type for n in onnx.load_from_string(raw).graph.node}
    assert "MaxPool" not in ops and {"Conv", "Sub", "Relu", "Add"} <= ops


def test_a_model_that_already_has_a_cut_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    raw = _cnn(relu_after_pool=True).SerializeToString()
    path.write_bytes(raw)
    assert read_model(path) == (raw, False)


def test_padded_pooling_is_not_rewritten() -> None:
    """Padding takes the maximum over fewer elements (-inf padding); a zero-padded selection
    would not, so the pooling stays as it is."""
    model = _cnn(pads=[1, 1, 1, 1])
    assert expand_maxpools(model, (1, 6, 6)) == (model, 0)


def test_global_max_pooling_is_the_pooling_over_the_whole_map() -> None:
    model = _cnn()
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            node.op_type = "GlobalMaxPool"
            del node.attribute[:]
    model.graph.initializer[2].CopyFrom(
        numpy_helper.from_array(RNG.normal(size=(3, 2)).astype(np.float32), "w")
    )
    onnx.checker.check_model(model)
    rewritten, count = expand_maxpools(model, (1, 6, 6))
    assert count == 1
    x = RNG.normal(size=(16, 1, 6, 6)).astype(np.float32)
    want = _run(model.SerializeToString(), x)
    np.testing.assert_allclose(_run(rewritten.SerializeToString(), x), want, rtol=1e-5, atol=1e-5)
