"""The static admission test an owner's ONNX graph passes before the auditor runs it.

Threat assumption: the owner signs whatever it likes, so a signed ``model.onnx`` may still be
built to exhaust the auditor (a ``Loop`` with 2^40 trips, a ``ConstantOfShape`` of 36 GB, a
tensor whose size depends on the data) or to make onnxruntime open a file (external data). The
sandbox's hard limits stop such a run; this test refuses it *before* it starts, so that a hostile
graph is a one-line failed check rather than a killed worker.

A graph is admitted only if

* it uses the default ONNX domain, with ops from :data:`ALLOWED_OPS` (straight-line tensor
  algebra: no control flow, no subgraph or function attributes, no random or sequence ops), and
  :data:`STATIC_ONLY_OPS` only on values the admission computes itself from constants
  (:func:`_fold_static`: the legacy PyTorch exporter's shape arithmetic, e.g. ``Mod`` in
  ``nn.Unflatten``); those values are folded into the copy that shape inference reads, the
  sandbox runs the graph as signed;
* it holds no tensor stored as external data and no model-local functions;
* ONNX shape inference (strict, with constant propagation) gives every value a fully known
  shape at two batch sizes, and every tensor grows at most linearly with the batch (no
  data-dependent or batch-squared shapes);
* the declared bytes of all values for one sample, and of every tensor that does not scale with
  the batch, stay under the budget.

The result, :class:`GraphCost`, tells the runtime how many samples fit in one call."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from audit.errors import VerificationError

__all__ = [
    "ALLOWED_ML_OPS",
    "ALLOWED_OPS",
    "GraphCost",
    "UnsafeModelError",
    "admit",
    "has_external_data",
]

ALLOWED_OPS = frozenset(
    {
        # arithmetic and activations
        *("Abs", "Add", "Sub", "Mul", "Div", "Neg", "Reciprocal", "Sqrt", "Exp", "Log", "Pow"),
        *("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish"),
        *("Tanh", "Softplus", "Softsign", "Erf", "Gelu", "Clip", "Max", "Min", "Sum", "Mean"),
        *("Sign", "Floor", "Ceil", "Round", "Softmax", "LogSoftmax"),
        # linear layers, convolutions, normalisation, pooling
        *("Gemm", "MatMul", "Conv", "BatchNormalization", "LayerNormalization"),
        *("InstanceNormalization", "MaxPool", "AveragePool", "GlobalAveragePool"),
        *("GlobalMaxPool",),
        # reductions and heads
        *("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin"),
        # comparisons and selection (sizes are still fixed by shape inference)
        *("Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "Where", "Not", "And"),
        *("Or",),
        # layout (output sizes come from constants; checked by shape inference)
        *("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice"),
        *("Gather", "Shape", "Identity", "Constant", "Cast", "Dropout", "Pad", "Expand", "Tile"),
        *("ConstantOfShape", "GatherElements"),  # the routed patch's per-row tree walk
    }
)
STATIC_ONLY_OPS = frozenset({"Mod"})
"""Ops admitted only where every input is a constant (initializers, ``Constant`` outputs, folded
values): integer division by a value the admission checked, never by data."""
_DEFAULT_DOMAINS = ("", "ai.onnx")
# the few classic-ML ops that converters (skl2onnx) put after a network: fixed-size gathers
# and elementwise maps, still static-shaped
ALLOWED_ML_OPS = frozenset({"ArrayFeatureExtractor", "Normalizer", "Scaler", "Binarizer"})
MAX_TREE_NODES = 1 << 22
"""``TreeEnsembleRegressor`` (the tree gate's router, and any regressor): at most this many
nodes in all, each tree listed ``0..m-1`` with both children of a branch after it, so its walk
ends within ``m`` steps per row (no cycle), and ``n_targets`` at most :data:`MAX_TREE_TARGETS`."""
MAX_TREE_TARGETS = 1 << 10
_GRAPH_ATTRIBUTES = (5, 10, 13)  # AttributeProto: GRAPH, GRAPHS, TYPE_PROTO(S) are not needed
_BATCHES = (1, 3)


class UnsafeModelError(VerificationError):
    """The owner's graph cannot be run with bounded cost (or would read outside its bytes)."""


@dataclass(frozen=True)
class GraphCost:
    """Declared memory of one run: ``per_sample`` bytes of all values that scale with the batch,
    ``fixed`` bytes of those that do not (initializers excluded: the file's size bounds them).
    ``batch``: the input's fixed batch size, or ``None`` when the batch dimension is free."""

    per_sample: int
    fixed: int
    batch: int | None

    def max_rows(self, budget: int) -> int:
        """The most samples one call may hold so that the declared values fit in ``budget``."""
        if self.batch is not None:
            return self.batch
        room = budget - self.fixed
        return max(1, room // max(self.per_sample, 1))


def _tree_problem(node: Any) -> str | None:
    """Why a ``TreeEnsembleRegressor`` could run without bound (None: it cannot)."""
    import numpy as np
    import onnx

    attrs = {a.name: a for a in node.attribute}
    if any(name.endswith("_as_tensor") for name in attrs):
        return "tensor-valued tree attributes are not accepted"
    lists = {}
    for name in ("nodes_treeids", "nodes_nodeids", "nodes_truenodeids", "nodes_falsenodeids"):
        if name not in attrs or attrs[name].type != onnx.AttributeProto.INTS:
            return f"tree attribute {name} is missing"
        if len(attrs[name].ints) > MAX_TREE_NODES:
            return f"more than {MAX_TREE_NODES} tree nodes"
        lists[name] = np.asarray(attrs[name].ints, dtype=np.int64)
    tree, ids = lists["nodes_treeids"], lists["nodes_nodeids"]
    if len({len(v) for v in lists.values()}) != 1:
        return "tree attributes of different lengths"
    targets = attrs.get("n_targets")
    if targets is None or not 1 <= targets.i <= MAX_TREE_TARGETS:
        return f"n_targets must be 1 to {MAX_TREE_TARGETS}"
    modes = attrs.get("nodes_modes")
    leaf = np.asarray([m == b"LEAF" for m in modes.strings]) if modes else np.zeros(0, bool)
    if len(leaf) != len(ids):
        return "tree attribute nodes_modes does not fit the nodes"
    start = np.flatnonzero(np.r_[True, tree[1:] != tree[:-1]])
    if len(np.unique(tree)) != len(start):
        return "a tree's nodes are not listed together"
    first = np.repeat(start, np.diff(np.r_[start, len(ids)]))
    if (ids != np.arange(len(ids)) - first).any():
        return "a tree's nodes are not listed 0..m-1"
    end = np.repeat(np.r_[start[1:], len(ids)] - start, np.diff(np.r_[start, len(ids)]))
    branch = ~leaf
    for side in (lists["nodes_truenodeids"], lists["nodes_falsenodeids"]):
        if ((side[branch] <= ids[branch]) | (side[branch] >= end[branch])).any():
            return "a branch's child is not a later node of its tree (a cycle or a dangling id)"
    return None


def _nodes(graph: Any) -> Iterable[Any]:
    yield from graph.node


def has_external_data(proto: Any) -> bool:
    """Whether any tensor of ``proto`` (initializers, node attributes) is stored as external
    data: decoding such a tensor (``numpy_helper.to_array``) would open a path on the reader's
    disk, relative to its working directory."""
    import onnx

    def external(tensor: Any) -> bool:
        return bool(tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data)

    if any(external(t) for t in proto.graph.initializer):
        return True
    for node in proto.graph.node:
        for attr in node.attribute:
            tensors = [attr.t] if attr.HasField("t") else []
            if any(external(t) for t in [*tensors, *attr.tensors]):
                return True
    return False


def _refuse_structure(proto: Any, folded: frozenset[str] = frozenset()) -> None:
    import onnx

    if proto.functions:
        raise UnsafeModelError("the model defines local functions, which the auditor does not run")
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    if not any(d in opsets for d in _DEFAULT_DOMAINS):
        raise UnsafeModelError("the model imports no default-domain ONNX opset")
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise UnsafeModelError(f"tensor {tensor.name[:60]!r} uses external data")
    for sparse in proto.graph.sparse_initializer:
        raise UnsafeModelError(f"sparse initializer {sparse.values.name[:60]!r} is not accepted")
    for node in _nodes(proto.graph):
        where = f"node {node.name[:40]!r} ({node.op_type[:40]})"
        if node.domain == "ai.onnx.ml" and node.op_type in ALLOWED_ML_OPS:
            pass
        elif node.domain == "ai.onnx.ml" and node.op_type == "TreeEnsembleRegressor":
            problem = _tree_problem(node)
            if problem:
                raise UnsafeModelError(f"{where}: {problem}")
        elif node.domain not in _DEFAULT_DOMAINS:
            raise UnsafeModelError(f"{where} is in domain {node.domain[:40]!r}, not ONNX's")
        elif node.op_type in STATIC_ONLY_OPS:
            if not node.output or any(o not in folded for o in node.output):
                raise UnsafeModelError(
                    f"{where}: op {node.op_type[:40]} is admitted only on constant inputs the "
                    "auditor evaluates itself (it reads a computed value, or divides by zero)"
                )
        elif node.op_type not in ALLOWED_OPS:
            raise UnsafeModelError(
                f"{where}: op {node.op_type[:40]} is not on the auditor's list of bounded ops"
            )
        for attr in node.attribute:
            if attr.type in _GRAPH_ATTRIBUTES or attr.HasField("g") or len(attr.graphs):
                raise UnsafeModelError(f"{where} has a subgraph attribute")
            tensors = [attr.t] if attr.HasField("t") else []
            for tensor in [*tensors, *attr.tensors]:
                if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
                    raise UnsafeModelError(f"{where}: its tensor uses external data")
            if attr.HasField("sparse_tensor") or len(attr.sparse_tensors):
                raise UnsafeModelError(f"{where} has a sparse tensor attribute")


_INLINE_BYTES = 4096


_FOLD_ELEMENTS = 64
_FOLDABLE = frozenset(
    {"Identity", "Cast", "Add", "Sub", "Mul", "Neg", "Mod", "Reshape", "Unsqueeze", "Squeeze"}
    | {"Concat"}
)


def _fold_static(proto: Any) -> tuple[Any, frozenset[str]]:
    """``proto`` with every small value that depends on constants alone (at most
    :data:`_FOLD_ELEMENTS` integer elements, ops in :data:`_FOLDABLE`) replaced by a ``Constant``
    node holding the value this function computes, and the names of those values. ONNX shape
    inference does not propagate through ``Mod``, so the legacy exporter's
    ``Shape -> Slice(.., Mod(3, 2)) -> Concat -> Reshape`` would otherwise read as a
    data-dependent shape. A ``Mod`` by zero is not folded (so it stays refused). The returned
    copy is for the admission's own analysis; ``proto`` is not modified."""
    import onnx
    from onnx import numpy_helper

    values: dict[str, Any] = {}
    for tensor in proto.graph.initializer:
        if math.prod(tensor.dims) <= _FOLD_ELEMENTS:
            values[tensor.name] = numpy_helper.to_array(tensor)
    folded: dict[str, Any] = {}
    for node in proto.graph.node:
        if node.domain not in _DEFAULT_DOMAINS or len(node.output) != 1:
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and math.prod(attr.t.dims) <= _FOLD_ELEMENTS:
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
            continue
        if node.op_type not in _FOLDABLE or not node.input:
            continue
        if any(name not in values for name in node.input if name):
            continue
        try:
            out = _evaluate(node, [values[name] if name else None for name in node.input])
        except (ValueError, TypeError, IndexError, ZeroDivisionError, KeyError):
            continue
        if out is None or out.size > _FOLD_ELEMENTS or out.dtype.kind not in "iu":
            continue
        values[node.output[0]] = folded[node.output[0]] = out
    if not folded:
        return proto, frozenset()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    nodes = []
    for node in copy.graph.node:
        if len(node.output) == 1 and node.output[0] in folded:
            name = node.output[0]
            tensor = numpy_helper.from_array(folded[name], name=name)
            nodes.append(onnx.helper.make_node("Constant", [], [name], value=tensor))
        else:
            nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy, frozenset(folded)


def _evaluate(node: Any, args: list[Any]) -> Any:
    """One :data:`_FOLDABLE` node on small integer arrays, by the ONNX operator specification."""
    import numpy as np
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op, a = node.op_type, args[0]
    if op == "Identity":
        return np.asarray(a)
    if op == "Cast":
        if np.asarray(a).dtype.kind not in "iu":
            return None
        return np.asarray(a).astype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"])))
    if op == "Neg":
        return -np.asarray(a)
    if op in ("Add", "Sub", "Mul", "Mod"):
        x, y = np.asarray(a), np.asarray(args[1])
        if x.dtype != y.dtype or x.dtype.kind not in "iu":
            return None
        if op == "Mod":
            if (y == 0).any():
                return None
            return np.fmod(x, y) if int(attrs.get("fmod", 0)) else np.mod(x, y)
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x, y)
    if op == "Reshape":
        shape = [int(d) for d in np.asarray(args[1]).reshape(-1)]
        if int(attrs.get("allowzero", 0)) or 0 in shape:
            return None
        return np.asarray(a).reshape(shape)
    if op in ("Unsqueeze", "Squeeze"):
        axes_in = attrs.get("axes")
        if axes_in is None and len(args) > 1 and args[1] is not None:
            axes_in = np.asarray(args[1]).reshape(-1).tolist()
        if axes_in is None:
            return np.squeeze(a) if op == "Squeeze" else None
        if op == "Squeeze":
            return np.squeeze(a, axis=tuple(int(x) for x in axes_in))
        return np.expand_dims(a, tuple(int(x) for x in axes_in))
    if op == "Concat":
        parts = [np.asarray(x) for x in args if x is not None]
        if len({p.dtype for p in parts}) != 1:
            return None
        return np.concatenate(parts, axis=int(attrs["axis"]))
    return None


def _skeleton(proto: Any) -> Any:
    """A copy of ``proto`` for shape inference without its large weights: an initializer over
    :data:`_INLINE_BYTES` becomes a graph input of the same type and shape (inference needs its
    shape, not its values; small ones, such as Reshape targets, keep their values). Peak memory
    stays near the model's size instead of a multiple of it."""
    import onnx

    graph = onnx.GraphProto(name=proto.graph.name)
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    declared = {v.name for v in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.ByteSize() <= _INLINE_BYTES:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    model = onnx.ModelProto(ir_version=proto.ir_version)
    model.opset_import.extend(proto.opset_import)
    model.graph.CopyFrom(graph)
    return model


def _sizes(proto: Any, batch: int) -> dict[str, int]:
    """Bytes of every graph value (inputs, node outputs) with the batch fixed at ``batch``."""
    import onnx
    from onnx import shape_inference

    copy = _skeleton(proto)
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    for value in copy.graph.output:  # declared outputs must not constrain inference
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(
            copy, check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as exc:  # onnx raises InferenceError / ValidationError / ValueError
        first = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise UnsafeModelError(f"shape inference refuses the graph: {first}") from exc
    known = {
        v.name: v
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    producer = {out: node for node in proto.graph.node for out in node.output}
    counts: dict[str, int] = {t.name: math.prod(t.dims) for t in proto.graph.initializer}
    sizes: dict[str, int] = {}
    for name in [v.name for v in proto.graph.input] + [
        out for node in proto.graph.node for out in node.output if out
    ]:
        value = known.get(name)
        if value is None or value.type.WhichOneof("value") != "tensor_type":
            raise UnsafeModelError(f"value {name[:60]!r} has no inferable tensor type")
        tensor = value.type.tensor_type
        count = _static_count(tensor)
        if count is None:
            count = _gather_bound(producer.get(name), counts)
        if count is None:
            raise UnsafeModelError(f"value {name[:60]!r} has a data-dependent shape")
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        counts[name] = count
        sizes[name] = count * max(int(itemsize), 1)
    return sizes


def _static_count(tensor: Any) -> int | None:
    if not tensor.HasField("shape"):
        return None
    count = 1
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        count *= dim.dim_value
    return count


_COUNT_PRESERVING = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Transpose"}
)


def _gather_bound(node: Any, counts: dict[str, int]) -> int | None:
    """An element count where shape inference gives none: ONNX has no shape inference for
    ``ai.onnx.ml.ArrayFeatureExtractor`` (its output holds at most one element of X per row of X
    and index, so ``|X| * |indices|`` bounds it), and the layout ops after it keep their input's
    element count."""
    if node is None:
        return None
    if node.op_type in _COUNT_PRESERVING and node.domain in _DEFAULT_DOMAINS and node.input:
        return counts.get(node.input[0])  # same number of elements as its input
    if node.op_type != "ArrayFeatureExtractor" or node.domain != "ai.onnx.ml":
        return None
    sources = [counts.get(i) for i in node.input]
    if len(sources) != 2 or any(c is None for c in sources):
        return None
    return int(sources[0]) * int(sources[1])  # type: ignore[arg-type]


def admit(proto: Any, *, budget: int) -> GraphCost:
    """Refuse (:class:`UnsafeModelError`) a graph whose cost cannot be bounded before running
    it; otherwise its declared memory. ``budget``: bytes the declared values of one sample plus
    the batch-independent values may take."""
    proto, folded = _fold_static(proto)
    _refuse_structure(proto, folded)
    inputs = [
        v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}
    ]
    if len(inputs) != 1:
        raise UnsafeModelError(f"the model must have exactly one input, it has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    fixed_batch = int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None
    if fixed_batch is not None:
        sizes = _sizes(proto, fixed_batch)
        total = sum(sizes.values())
        if total > budget:
            raise UnsafeModelError(
                f"the graph declares {total} bytes of values, over the {budget}-byte budget"
            )
        return GraphCost(per_sample=total, fixed=0, batch=fixed_batch)
    low, high = (_sizes(proto, b) for b in _BATCHES)
    step = _BATCHES[1] - _BATCHES[0]
    per_sample = fixed = 0
    for name, small in low.items():
        big = high[name]
        growth, rest = divmod(big - small, step)
        constant = small - growth * _BATCHES[0]
        if rest or growth < 0 or constant < 0:
            raise UnsafeModelError(
                f"value {name[:60]!r} does not grow linearly with the batch ({small} -> {big} bytes)"
            )
        per_sample += growth
        fixed += constant
        if fixed + per_sample > budget:
            raise UnsafeModelError(
                f"value {name[:60]!r} takes the graph's declared values over the "
                f"{budget}-byte budget"
            )
    return GraphCost(per_sample=per_sample, fixed=fixed, batch=None)
