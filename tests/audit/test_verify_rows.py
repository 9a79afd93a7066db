"""``structure.rows``: the static proof that the served logits are computed row by row. Each
tampered graph below couples the rows of a batch in one way (a reduction, a normalisation, a
gather, a slice or a reshape across rows, the batch size read as data, batch statistics) and must
be refused; the layouts exporters emit must be accepted."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from audit.verify._graph import PATCH_OUTPUT
from audit.verify._rows import row_problems

D, C = 6, 4
RNG = np.random.default_rng(0)
OUT = PATCH_OUTPUT


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:  # type: ignore[type-arg]
    return numpy_helper.from_array(np.asarray(value), name)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    *,
    batch: int | str = "N",
    shape: tuple[int, ...] = (D,),
    opset: int = 17,
) -> onnx.ModelProto:
    """``x [batch, *shape]`` -> nodes -> ``prune/output``; a Gemm layer first (``h``)."""
    w = RNG.normal(size=(int(np.prod(shape)), C)).astype(np.float32)
    front = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w"], ["h"]),
    ]
    graph = helper.make_graph(
        front + nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *shape])],
        [helper.make_tensor_value_info(OUT, TensorProto.FLOAT, None)],
        initializer=[_init("w", w), *inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _problems(model: onnx.ModelProto) -> list[str]:
    return [str(p) for p in row_problems(model)]


# -- accepted -------------------------------------------------------------------------------------


def test_a_plain_mlp_is_row_by_row() -> None:
    assert _problems(_model([helper.make_node("Relu", ["h"], [OUT])], [])) == []


def test_the_legacy_exporters_run_time_flatten_is_row_by_row() -> None:
    """``x.view(x.size(0), -1)``: Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape."""
    nodes = [
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], [OUT]),
    ]
    inits = [
        _init("zero", np.array(0, np.int64)),
        _init("axes0", np.array([0], np.int64)),
        _init("minus1", np.array([-1], np.int64)),
    ]
    assert _problems(_model(nodes, inits)) == []


def test_a_conv_net_with_pooling_and_softmax_over_classes_is_row_by_row() -> None:
    k = RNG.normal(size=(2, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["gf"], axis=1),
        helper.make_node("Concat", ["r", "gf"], ["cat"], axis=1),
        helper.make_node("Softmax", ["cat"], [OUT], axis=1),
    ]
    assert _problems(_model(nodes, [_init("k", k)], shape=(1, 4, 4))) == []


def test_a_fixed_batch_of_one_is_row_by_row() -> None:
    assert _problems(_model([helper.make_node("Relu", ["h"], [OUT])], [], batch=1)) == []


# -- refused (tampered graphs) ----------------------------------------------------------------------


def _mean_over_batch() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ReduceMean", ["h", "axes0"], ["m"], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Add", ["h", "m0"], [OUT]),
    ]
    return _model(
        nodes, [_init("axes0", np.array([0], np.int64)), _init("zero", np.zeros(1, np.float32))]
    )


def _softmax_over_batch() -> onnx.ModelProto:
    return _model([helper.make_node("Softmax", ["h"], [OUT], axis=0)], [])


def _batch_size_as_data() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Shape", ["h"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Equal", ["n", "five"], ["is5"]),
        helper.make_node("Cast", ["is5"], ["on"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["h", "on"], [OUT]),
    ]
    inits = [_init("zero", np.array(0, np.int64)), _init("five", np.array(5, np.int64))]
    return _model(nodes, inits)


def _reversed_rows() -> onnx.ModelProto:
    nodes = [helper.make_node("Slice", ["h", "st", "en", "ax", "step"], [OUT])]
    inits = [
        _init("st", np.array([-1], np.int64)),
        _init("en", np.array([-(2**62)], np.int64)),
        _init("ax", np.array([0], np.int64)),
        _init("step", np.array([-1], np.int64)),
    ]
    return _model(nodes, inits)


def _gather_other_rows() -> onnx.ModelProto:
    """Every row reads row 0's logits through GatherElements along the batch axis."""
    nodes = [
        helper.make_node("Mul", ["h", "zero"], ["z"]),
        helper.make_node("Cast", ["z"], ["idx"], to=TensorProto.INT64),
        helper.make_node("GatherElements", ["h", "idx"], [OUT], axis=0),
    ]
    return _model(nodes, [_init("zero", np.zeros(1, np.float32))])


def _reshape_across_rows() -> onnx.ModelProto:
    """[N, 4] -> [2, 2N] -> [N, 4]: the same shape back, with rows interleaved."""
    nodes = [
        helper.make_node("Transpose", ["h"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "back"], [OUT]),
    ]
    return _model(nodes, [_init("back", np.array([-1, C], np.int64))])


def _gram_matrix() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Transpose", ["h"], ["t"], perm=[1, 0]),
        helper.make_node("MatMul", ["t", "h"], ["gram"]),
        helper.make_node("ReduceSum", ["gram", "axes1"], ["sum"], keepdims=0),
        helper.make_node("Add", ["h", "sum"], [OUT]),
    ]
    return _model(nodes, [_init("axes1", np.array([1], np.int64))])


def _batch_norm_training() -> onnx.ModelProto:
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["h", "g", "b", "mu", "var"],
            [OUT, "running_mean", "running_var"],
            training_mode=1,
        )
    ]
    inits = [_init("g", ones), _init("b", zeros), _init("mu", zeros), _init("var", ones)]
    return _model(nodes, inits, opset=15)


def _doubled_rows() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Concat", ["h", "h"], ["hh"], axis=0),
        helper.make_node("Slice", ["hh", "st", "en", "ax"], [OUT]),
    ]
    inits = [
        _init("st", np.array([1], np.int64)),
        _init("en", np.array([2**62], np.int64)),
        _init("ax", np.array([0], np.int64)),
    ]
    return _model(nodes, inits)


def _fixed_batch_of_five() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["h"], [OUT])], [], batch=5)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_mean_over_batch, "no batch axis"),
        (_softmax_over_batch, "normalises over the batch axis"),
        (_batch_size_as_data, "batch size"),
        (_reversed_rows, "slices the batch axis"),
        (_gather_other_rows, "indexes along the batch axis"),
        (_reshape_across_rows, "reshapes across rows"),
        (_gram_matrix, "no batch axis"),
        (_batch_norm_training, "training mode"),
        (_doubled_rows, "not one row per sample"),
        (_fixed_batch_of_five, "fixed batch of 5"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_a_graph_that_couples_rows_is_refused(
    build: Callable[[], onnx.ModelProto], reason: str
) -> None:
    problems = _problems(build())
    assert problems, "the coupling was not found"
    assert reason in problems[0], problems[0]


def test_only_the_graph_up_to_the_logits_is_analysed() -> None:
    """A node after ``prune/output`` (the output tail, checked node for node elsewhere) is not
    part of the proof."""
    model = _model([helper.make_node("Relu", ["h"], [OUT])], [])
    model.graph.node.append(helper.make_node("ReduceMean", [OUT], ["tail"], axes=[0]))
    model.graph.output.append(helper.make_tensor_value_info("tail", TensorProto.FLOAT, None))
    assert _problems(model) == []
