"""Named hostile ONNX graphs: each is valid ONNX that onnxruntime would accept, built to exhaust
or trick the auditor (unbounded loops, huge allocations, data-dependent shapes, external data)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(
    nodes: list[onnx.NodeProto],
    *,
    inits: list[onnx.TensorProto] = (),
    out_shape=None,  # type: ignore[assignment]
    in_shape: list[object] | None = None,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape or ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def loop_2_40() -> bytes:
    """A Loop with 2^40 trips around an Add: runs forever on any input."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    trips = numpy_helper.from_array(np.array(1 << 40, np.int64), "trips")
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        inits=[trips, cond],
    )


def constant_of_shape(elements: int = 9 << 30) -> bytes:
    """ConstantOfShape of ``elements`` floats (36 GB by default), added to the input's sum."""
    shape = numpy_helper.from_array(np.array([elements], np.int64), "shape")
    return _model(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["big"],
                value=numpy_helper.from_array(np.array([1.0], np.float32)),
            ),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        inits=[shape],
    )


def data_dependent_shape() -> bytes:
    """ConstantOfShape whose shape is computed from the input's values."""
    return _model(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["mi", "one"], ["shape"]),
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        inits=[numpy_helper.from_array(np.array([1], np.int64), "one")],
    )


def batch_squared() -> bytes:
    """x x^T: a [N, N] tensor, quadratic in the batch."""
    return _model(
        [
            helper.make_node("Transpose", ["x"], ["xt"]),
            helper.make_node("MatMul", ["x", "xt"], ["gram"]),
            helper.make_node("ReduceSum", ["gram"], ["s"], axes=None, keepdims=0)
            if False
            else helper.make_node("ReduceSum", ["gram", "ax"], ["s"], keepdims=1),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        inits=[numpy_helper.from_array(np.array([1], np.int64), "ax")],
    )


def external_data(location: str) -> bytes:
    """A weight stored as external data at ``location`` (a path on the auditor's disk)."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], inits=[tensor])


def custom_domain() -> bytes:
    """An op from a non-ONNX domain."""
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def matmul_chain(width: int = 1024, depth: int = 64) -> bytes:
    """Admissible but slow: ``depth`` [width, width] MatMuls (for the wall-clock limit)."""
    w = numpy_helper.from_array(np.full((width, width), 1e-3, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"])]
    for i in range(1, depth):
        nodes.append(helper.make_node("MatMul", [f"h{i - 1}", "w"], [f"h{i}"]))
    nodes.append(helper.make_node("Identity", [f"h{depth - 1}"], ["y"]))
    return _model(nodes, inits=[w], in_shape=["N", width])


def nan_logits() -> bytes:
    """Logits are NaN for every input (0 * inf)."""
    inf = numpy_helper.from_array(np.full((4, 3), np.inf, np.float32), "inf")
    zero = numpy_helper.from_array(np.zeros((4,), np.float32), "zero")
    return _model(
        [
            helper.make_node("Mul", ["x", "zero"], ["z"]),
            helper.make_node("MatMul", ["z", "inf"], ["y"]),
        ],
        inits=[inf, zero],
    )


def honest_linear() -> bytes:
    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], inits=[w])


def _shape_by_mod(divisor: int) -> list[onnx.NodeProto]:
    """The legacy PyTorch exporter's ``nn.Unflatten``: the axis index ``Mod(3, divisor)`` slices
    the input's shape, which then reshapes the input."""
    return [
        helper.make_node("Constant", [], ["three"], value=numpy_helper.from_array(np.array([3]))),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([divisor]))),
        helper.make_node("Mod", ["three", "k"], ["axis"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "axis"], ["lead"]),
        helper.make_node("Concat", ["lead", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]


_SHAPE_INITS = [
    numpy_helper.from_array(np.array([0], np.int64), "zero"),
    numpy_helper.from_array(np.array([2, 2], np.int64), "tail"),
]


def shape_by_mod() -> bytes:
    """Honest: ``Mod`` of two constants in a shape computation ([N, 4] -> [N, 2, 2])."""
    return _model(_shape_by_mod(2), inits=_SHAPE_INITS)


def shape_mod_by_zero() -> bytes:
    """``Mod(3, 0)``: integer division by zero in the shape computation."""
    return _model(_shape_by_mod(0), inits=_SHAPE_INITS)


def mod_on_data() -> bytes:
    """``Mod`` of the input itself (not a constant shape computation)."""
    return _model(
        [helper.make_node("Mod", ["x", "k"], ["y"], fmod=1)],
        inits=[numpy_helper.from_array(np.array([0.5], np.float32), "k")],
    )


def _tree(**changes: object) -> bytes:
    """A one-tree ``TreeEnsembleRegressor`` over ``x [N, 4]`` (root tests x0 >= 0, two leaves),
    with ``changes`` applied to its attributes."""
    attrs: dict[str, object] = {
        "n_targets": 1,
        "nodes_treeids": [0, 0, 0],
        "nodes_nodeids": [0, 1, 2],
        "nodes_featureids": [0, 0, 0],
        "nodes_values": [0.0, 0.0, 0.0],
        "nodes_modes": ["BRANCH_GTE", "LEAF", "LEAF"],
        "nodes_truenodeids": [1, 0, 0],
        "nodes_falsenodeids": [2, 0, 0],
        "target_treeids": [0, 0],
        "target_nodeids": [1, 2],
        "target_ids": [0, 0],
        "target_weights": [1.0, 2.0],
    }
    attrs.update(changes)
    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def tree_honest() -> bytes:
    return _tree()


def tree_cycle() -> bytes:
    """A branch whose false child is the root: a walk that never ends."""
    return _tree(nodes_falsenodeids=[0, 0, 0])


def tree_dangling() -> bytes:
    """A child id past the tree's nodes."""
    return _tree(nodes_truenodeids=[7, 0, 0])


def tree_targets() -> bytes:
    """Two million outputs per row."""
    return _tree(n_targets=1 << 21)
