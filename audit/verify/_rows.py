"""``structure.rows``: a static proof that the served model acts row by row.

Threat: every other check replays ``model.onnx`` at a few batch sizes (``replay.batch``: 1, 7, 64
and all rows). An owner who reads that code can build a model whose rows interact only at another
batch size: an op that reduces over the batch axis (a mean over the batch added back with weight
zero except when the batch is 5), a softmax or a gather across rows, or the batch size itself
read with ``Shape`` and compared with a constant. Where such a model is queried with 5 rows, the
patches can be undone. The original's own layers are pinned byte for byte, but that pins a
dishonest original as well.

The proof tracks the batch axis through the graph that computes ``prune/output`` (the logits every
claim is about), using ONNX shape inference at two batch sizes (:data:`BATCHES`). A value either
has exactly one *batch axis* (its size is the batch at both sizes) or none (its shape does not
depend on the batch); any other dependence (a dimension of 2B, two batch axes) is refused. Then:

* a node reading a batch-carrying value must give batch-carrying outputs (a reduction, ArgMax or
  gather over the batch axis gives a batch-free result and is refused); ``Shape``/``Size`` of one
  gives a *batch-size* value;
* a batch-size value may only be combined by shape arithmetic (``Gather``, ``Slice``, ``Concat``,
  ``Unsqueeze``, ``Squeeze``, ``Cast``, ``Identity``, ``Add``/``Sub``/``Mul``/``Div``) and used
  as the shape operand of ``Reshape``, ``Expand``, ``ConstantOfShape`` or ``Tile``, never as
  data (so a comparison with the batch size cannot reach a computation);
* ops whose output keeps the batch axis but that could mix rows along it are refused there:
  ``Softmax``/``LogSoftmax``/``Hardmax``/``LayerNormalization`` normalising over it, a
  ``MatMul``/``Gemm`` contracting it, ``Conv``/pooling/normalisation/``BatchNormalization``/
  ``Normalizer`` and ``TreeEnsembleRegressor`` with the batch not first, ``Gather``/``GatherElements`` indexing along it,
  ``Slice`` cutting it (only the full range, in order, is accepted), ``Concat`` along it, and
  ``Reshape``/``Flatten`` that do not keep each row's elements contiguous and in order;
* a broadcasting op's batch-free operands have size 1 (or no dimension) at the batch axis;
* ``BatchNormalization`` in training mode and ``Dropout`` with a training-mode input that is not
  the constant false (batch statistics, random masks) are refused;
* an op outside the table is refused: the proof never assumes.

A model with a fixed batch of 1 is trivially row by row (every query is one row); a fixed batch
above 1 is refused (``prune`` frees a fixed batch on import)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._graph import PATCH_OUTPUT, up_to

__all__ = ["BATCHES", "RowProblem", "StructureRows", "row_problems"]

BATCHES = (5, 7)
"""The two batch sizes of the shape inference (distinct primes: a batch axis has size 5 then 7,
a dimension of 2B has 10 then 14, a static one keeps its size)."""

_DEFAULT = ("", "ai.onnx")
_ELEMENTWISE = frozenset(
    {
        *("Abs", "Add", "Sub", "Mul", "Div", "Neg", "Reciprocal", "Sqrt", "Exp", "Log", "Pow"),
        *("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish"),
        *("Tanh", "Softplus", "Softsign", "Erf", "Gelu", "Clip", "Max", "Min", "Sum", "Mean"),
        *("Sign", "Floor", "Ceil", "Round", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"),
        *("Equal", "Where", "Not", "And", "Or", "Cast", "Identity", "Mod"),
    }
)
_ML_ELEMENTWISE = frozenset({"Scaler", "Binarizer"})
_SHAPE_ARITH = frozenset(
    {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity"}
    | {"Add", "Sub", "Mul", "Div", "Reshape"}
)
_SHAPE_OPERAND = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0, "Tile": 1}
"""Op -> the input position that may hold a batch-size value (a shape or a repeat count)."""
_BATCH_FIRST = frozenset(
    {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
    | {"InstanceNormalization", "BatchNormalization", "LRN"}
)
_LAYOUT_KEEPING = frozenset({"Transpose", "Squeeze", "Unsqueeze", "Pad", "Expand", "Tile"})
_REDUCING = frozenset(
    {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "Split"}
)


@dataclass(frozen=True)
class RowProblem:
    """Why one node is not proved to act row by row."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"node {self.node[:40]!r} ({self.op[:30]}): {self.reason}"


@dataclass(frozen=True)
class _Value:
    axis: int | None  # the batch axis, or None
    size_dependent: bool  # a value computed from the batch size (Shape of a batch value)
    dims: tuple[tuple[int, int], ...]  # (size at BATCHES[0], size at BATCHES[1]) per axis


def _inferred(proto: Any, batch: int) -> dict[str, tuple[int, ...] | None]:
    """Every value's shape with the input's batch fixed at ``batch`` (``None``: unknown)."""
    from onnx import shape_inference

    from audit.sandbox._policy import _skeleton

    copy = _skeleton(proto)
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    for value in copy.graph.output:
        value.type.tensor_type.ClearField("shape")
    inferred = shape_inference.infer_shapes(copy, strict_mode=True, data_prop=True)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor = value.type.tensor_type
        if value.type.WhichOneof("value") != "tensor_type" or not tensor.HasField("shape"):
            shapes[value.name] = None
            continue
        dims = tensor.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
        else:
            shapes[value.name] = None
    for tensor in proto.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes


def _constants(proto: Any) -> dict[str, np.ndarray[Any, Any]]:
    """Small constant values (initializers and ``Constant`` nodes, after the sandbox's folding of
    shape arithmetic): the parameters of ``Slice`` and friends."""
    from onnx import numpy_helper

    values: dict[str, np.ndarray[Any, Any]] = {}
    for tensor in proto.graph.initializer:
        if math.prod(tensor.dims) <= 4096:
            values[tensor.name] = numpy_helper.to_array(tensor)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT:
            for attr in node.attribute:
                if attr.name == "value" and math.prod(attr.t.dims) <= 4096:
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in _DEFAULT:
            return int(entry.version)
    return 0


class _Walk:
    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.opset = _opset(proto)
        self.constants = _constants(proto)
        self.low, self.high = (_inferred(proto, b) for b in BATCHES)
        self.values: dict[str, _Value] = {}
        self.problems: list[RowProblem] = []

    def value(self, name: str, *, size_dependent: bool = False) -> _Value | str:
        """The batch axis of ``name`` from its two inferred shapes, or why it has none."""
        low, high = self.low.get(name), self.high.get(name)
        if low is None or high is None or len(low) != len(high):
            return f"shape inference gives no shape for {name[:60]!r}"
        axes = [i for i, (a, b) in enumerate(zip(low, high, strict=True)) if a != b]
        for i in axes:
            if (low[i], high[i]) != BATCHES:
                return (
                    f"{name[:60]!r} has a dimension of {low[i]} then {high[i]} at batches "
                    f"{BATCHES[0]} and {BATCHES[1]} (not one row per sample)"
                )
        if len(axes) > 1:
            return f"{name[:60]!r} has {len(axes)} batch axes"
        dims = tuple(zip(low, high, strict=True))
        return _Value(axes[0] if axes else None, size_dependent, dims)

    def fail(self, node: Any, reason: str) -> None:
        self.problems.append(RowProblem(node.name or node.output[0], node.op_type, reason))

    def run(self) -> list[RowProblem]:
        inits = {t.name for t in self.proto.graph.initializer}
        for entry in self.proto.graph.input:
            if entry.name in inits:
                continue
            got = self.value(entry.name)
            if isinstance(got, str):
                return [RowProblem(entry.name, "input", got)]
            if got.axis != 0:
                return [RowProblem(entry.name, "input", "the batch is not the input's first axis")]
            self.values[entry.name] = got
        for name in inits:
            got = self.value(name)
            if isinstance(got, str):
                return [RowProblem(name, "initializer", got)]
            self.values[name] = got
        for node in self.proto.graph.node:
            self.node(node)
            if self.problems:
                break
        return self.problems

    def node(self, node: Any) -> None:
        ins = [self.values.get(name) if name else None for name in node.input]
        if any(name and v is None for name, v in zip(node.input, ins, strict=True)):
            self.fail(node, "reads a value the proof has not seen (graph not in order)")
            return
        batch_in = [i for i, v in enumerate(ins) if v is not None and v.axis is not None]
        sized_in = [i for i, v in enumerate(ins) if v is not None and v.size_dependent]
        op, domain = node.op_type, node.domain
        if domain not in _DEFAULT and not (domain == "ai.onnx.ml" and op in _ML_KNOWN):
            self.fail(node, f"op {domain}.{op} is not in the row-by-row table")
            return
        size_out = False
        if op in ("Shape", "Size"):
            size_out = bool(batch_in) or bool(sized_in)
            batch_in = []  # the output is not a batch value (checked below)
        elif sized_in:
            allowed = _SHAPE_OPERAND.get(op)
            if op in _SHAPE_ARITH and not batch_in and domain in _DEFAULT:
                size_out = True
            elif allowed is None or sized_in != [allowed]:
                self.fail(
                    node,
                    "the batch size (read with Shape/Size) reaches it as data; it may only "
                    "shape a Reshape/Expand/ConstantOfShape/Tile",
                )
                return
        if op in ("BatchNormalization", "Dropout") and self.training(node):
            self.fail(node, self.training(node))  # batch statistics or a random mask
            return
        outs: list[_Value] = []
        for name in node.output:
            if not name:
                continue
            got = self.value(name, size_dependent=size_out)
            if isinstance(got, str):
                self.fail(node, got)
                return
            outs.append(got)
        if op in ("Shape", "Size"):
            if any(o.axis is not None for o in outs):
                self.fail(node, "gives a batch-shaped value")
                return
        elif batch_in and any(o.axis is None for o in outs):
            self.fail(node, "combines the rows of a batch into a value with no batch axis")
            return
        reason = self.rule(node, ins, batch_in, outs)
        if reason:
            self.fail(node, reason)
            return
        for name, out in zip([n for n in node.output if n], outs, strict=True):
            self.values[name] = out

    def rule(
        self, node: Any, ins: list[_Value | None], batch_in: list[int], outs: list[_Value]
    ) -> str:
        """'' when ``node`` keeps rows apart (given the shape facts already checked)."""
        op = node.op_type
        if not batch_in:
            if op in ("Dropout", "BatchNormalization"):
                return self.training(node)
            return ""  # a batch-free computation, or rows built from constants
        out = outs[0]
        axis = out.axis
        assert axis is not None
        first = ins[batch_in[0]]
        assert first is not None and first.axis is not None
        a = first.axis
        rank = len(first.dims)
        if op in _ELEMENTWISE or (node.domain == "ai.onnx.ml" and op in _ML_ELEMENTWISE):
            return self.broadcast(ins, out)
        if op in _BATCH_FIRST:
            if batch_in != [0] or a != 0:
                return "the batch is not the first axis of its data input"
            return self.training(node)
        if op == "Dropout":
            return self.training(node)
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            where = int(_attr(node, "axis", -1 if self.opset >= 13 else 1))
            where = where + rank if where < 0 else where
            covered = {where} if self.opset >= 13 else set(range(where, rank))
            return "normalises over the batch axis" if a in covered else ""
        if op == "LayerNormalization":
            where = int(_attr(node, "axis", -1))
            where = where + rank if where < 0 else where
            return "normalises over the batch axis" if a >= where else ""
        if op == "MatMul":
            return self.matmul(ins)
        if op == "Gemm":
            return self.gemm(node, ins)
        if op in ("Reshape", "Flatten"):
            return _contiguous(first, out)
        if op in _LAYOUT_KEEPING or op in _REDUCING:
            return ""  # shape facts suffice: the batch axis survives, sized exactly B
        if op == "Concat":
            where = int(_attr(node, "axis", 0))
            where = where + len(out.dims) if where < 0 else where
            if where == axis:
                return "concatenates along the batch axis"
            if any(v is None or v.axis != axis for v in ins):
                return "concatenates a batch-free operand with rows"
            return ""
        if op == "Slice":
            return self.slice(node, a)
        if op in ("Gather", "GatherElements"):
            where = int(_attr(node, "axis", 0))
            data = ins[0]
            if data is not None and data.axis is not None:
                where = where + len(data.dims) if where < 0 else where
                if where == data.axis:
                    return "indexes along the batch axis"
            return ""
        if op in ("Normalizer", "TreeEnsembleRegressor"):  # each row of X [N, F] alone
            return "" if a == 0 and rank == 2 else "the batch is not the first of two axes"
        if op == "ArrayFeatureExtractor":
            return "" if a != rank - 1 else "selects along the batch axis"
        return f"op {op} is not in the row-by-row table"

    def broadcast(self, ins: list[_Value | None], out: _Value) -> str:
        """Right-aligned numpy broadcasting: every batch operand's axis lands on the output's
        batch axis; a batch-free operand has size 1 (or no dimension) there."""
        assert out.axis is not None
        rank = len(out.dims)
        for value in ins:
            if value is None:
                continue
            shift = rank - len(value.dims)
            if value.axis is not None:
                if value.axis + shift != out.axis:
                    return "aligns a batch axis with another axis"
            else:
                at = out.axis - shift
                if at >= 0 and value.dims[at][0] != 1:
                    return "broadcasts a batch-free operand along the batch axis"
        return ""

    def matmul(self, ins: list[_Value | None]) -> str:
        left, right = ins[0], ins[1]
        if left is not None and left.axis is not None and left.axis == len(left.dims) - 1:
            return "contracts the batch axis (MatMul)"
        vector = right is not None and len(right.dims) < 2
        if (
            right is not None
            and right.axis is not None
            and (vector or right.axis == len(right.dims) - 2)
        ):
            return "contracts the batch axis (MatMul)"
        return ""

    def gemm(self, node: Any, ins: list[_Value | None]) -> str:
        contract = (
            1 if not _attr(node, "transA", 0) else 0,
            0 if not _attr(node, "transB", 0) else 1,
        )
        for value, axis in zip(ins[:2], contract, strict=True):
            if value is not None and value.axis == axis:
                return "contracts the batch axis (Gemm)"
        bias = ins[2] if len(ins) > 2 else None
        if bias is not None and bias.axis is not None:
            return "adds a batch-shaped bias (Gemm)"
        return ""

    def slice(self, node: Any, axis: int) -> str:
        params = [self.constants.get(name) if name else None for name in node.input[1:5]]
        if self.opset < 10:
            starts = np.asarray(_attr(node, "starts", []))
            ends = np.asarray(_attr(node, "ends", []))
            axes = _attr(node, "axes", None)
            steps = None
        else:
            if params[0] is None or params[1] is None:
                return "Slice bounds are computed at run time"
            starts, ends = params[0], params[1]
            axes = params[2] if len(params) > 2 else None
            steps = params[3] if len(params) > 3 else None
            if (len(node.input) > 3 and node.input[3] and axes is None) or (
                len(node.input) > 4 and node.input[4] and steps is None
            ):
                return "Slice axes or steps are computed at run time"
        data = self.values[node.input[0]]
        rank = len(data.dims)
        axis_list = list(range(len(starts))) if axes is None else [int(v) for v in np.ravel(axes)]
        for i, where in enumerate(axis_list):
            where = where + rank if where < 0 else where
            if where != axis:
                continue
            step = 1 if steps is None else int(np.ravel(steps)[i])
            start, end = int(np.ravel(starts)[i]), int(np.ravel(ends)[i])
            if step != 1 or start != 0 or end < BATCHES[1]:
                return "slices the batch axis (only the full range in order keeps rows)"
        return ""

    def training(self, node: Any) -> str:
        if node.op_type == "BatchNormalization" and _attr(node, "training_mode", 0):
            return "BatchNormalization in training mode (batch statistics)"
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = self.constants.get(node.input[2])
            if flag is None or bool(np.ravel(flag)[0]):
                return "Dropout whose training-mode input is not the constant false"
        return ""


_ML_KNOWN = _ML_ELEMENTWISE | {"Normalizer", "ArrayFeatureExtractor", "TreeEnsembleRegressor"}


def _contiguous(data: _Value, out: _Value) -> str:
    """Reshape/Flatten keep rows apart when every row's elements stay one contiguous block, in
    order: the dimensions before the batch axis are all 1, before and after."""
    assert data.axis is not None and out.axis is not None
    before_in = math.prod(d[0] for d in data.dims[: data.axis])
    before_out = math.prod(d[0] for d in out.dims[: out.axis])
    if before_in != 1 or before_out != 1:
        return "reshapes across rows (dimensions other than 1 before the batch axis)"
    return ""


def row_problems(proto: Any, outputs: Sequence[str] = (PATCH_OUTPUT,)) -> list[RowProblem]:
    """Why the graph computing ``outputs`` is not proved to act row by row (empty: proved)."""
    import onnx

    inputs = [
        v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}
    ]
    if len(inputs) != 1:
        return [RowProblem("", "graph", f"the model has {len(inputs)} inputs, not one")]
    dims = inputs[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):
        if dims[0].dim_value == 1:
            return []
        return [
            RowProblem(
                inputs[0].name,
                "input",
                f"the input has a fixed batch of {dims[0].dim_value}: rows inside one call are "
                "not proved independent (export the model with a free batch dimension)",
            )
        ]
    from audit.sandbox._policy import _fold_static

    try:
        sub, _ = _fold_static(onnx.load_from_string(up_to(proto, list(outputs))))
        return _Walk(sub).run()
    except Exception as exc:  # onnx shape inference raises several unrelated types
        first = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        return [RowProblem("", "graph", f"shape inference refuses the graph: {first}")]


class StructureRows(Check[VerifyContext]):
    name = "structure.rows"
    summary = (
        "every op that computes model.onnx's logits keeps the rows of a batch apart (static "
        "proof over the batch axis: no reduction, mixing or batch-size test across rows)"
    )
    requires = frozenset[str]()

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        proto = ctx.patched_proto()
        names = {o.name for o in proto.graph.output} | {
            o for n in proto.graph.node for o in n.output
        }
        if PATCH_OUTPUT not in names:
            raise CheckUnavailable(f"model.onnx computes no {PATCH_OUTPUT!r}")
        problems = row_problems(proto)
        evidence = {"problems": [str(p) for p in problems[:5]], "batches": list(BATCHES)}
        if problems:
            return self.failed(str(problems[0]), **evidence)
        return self.passed(
            f"all {len(proto.graph.node)} nodes keep rows apart (batch axis tracked at batches "
            f"{BATCHES[0]} and {BATCHES[1]})",
            **evidence,
        )
