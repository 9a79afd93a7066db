"""The verifier's own parse of the original head into float64 affine layers separated by
piecewise-linear activations, written from the ONNX operator specification (not from the
owner's code).

Used where onnxruntime alone cannot answer: the region of a point as linear constraints (the
dense gate rows, the exact LP over a region). The head is a chain of *segments*: between two
activations (Relu, LeakyRelu, PRelu: ``phi(z) = z`` for ``z >= 0``, ``slope * z`` below; Clip
as two Relu units, ``clip(t, a, b) = a + relu(t - a) - relu(t - b)``, see ``Head``) every
node must be affine in its one computed input (Gemm/MatMul with constant weights, Add/Sub/Mul/Div
by constants, Conv, BatchNormalization, average pooling and means over non-batch axes, layout
ops, Cast to float32, Identity/Dropout). Each segment is evaluated on the identity basis in
float64 (``b = seg(0)``, ``W e_i = seg(e_i) - b``), exact for affine maps up to rounding.
Invariant: callers check the parse against onnxruntime on real points
(:meth:`AffineHead.max_error`) before using it, so a mis-parse can never silently decide
anything."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._framework import CheckUnavailable
from audit.verify._graph import Head

__all__ = ["AffineHead", "parse_head"]

F64 = NDArray[np.float64]
_ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Clip")
_MAX_BASIS = 20_000_000
"""Largest identity-basis evaluation (entries of one segment's output) the parse attempts."""


@dataclass(frozen=True, eq=False)
class AffineHead:
    """``z_1 = W_1 x + b_1``, ``z_{l+1} = W_{l+1} phi_l(z_l) + b_{l+1}``; the last ``z`` is the
    logits. ``weights[l]`` is ``[out, in]``; ``slopes[l]`` the negative-side slope per unit of
    hidden layer ``l``."""

    weights: tuple[F64, ...]
    biases: tuple[F64, ...]
    slopes: tuple[F64, ...] = ()

    def factors(self, masks: F64) -> F64:
        """Activation factors ``[P, H]`` on the regions of patterns ``masks`` (1 = active): 1 on
        active units, the unit's negative-side slope on inactive ones (0 for Relu)."""
        if not self.slopes:
            return masks
        return masks + (1.0 - masks) * np.concatenate(self.slopes)[None, :]

    def lipschitz(self) -> F64 | float:
        """Per hidden unit, the Lipschitz constant of its activation (``max(1, |slope|)``)."""
        if not self.slopes:
            return 1.0
        return np.maximum(1.0, np.abs(np.concatenate(self.slopes)))[None, :]

    def _slope(self, layer: int) -> F64 | float:
        return self.slopes[layer] if self.slopes else 0.0

    def forward(self, x: F64) -> tuple[F64, F64]:
        """(hidden pre-activations concatenated ``[N, H]``, logits ``[N, O]``)."""
        hidden: list[F64] = []
        value = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            value = value @ w.T + b
            if i < len(self.weights) - 1:
                hidden.append(value)
                value = np.where(value >= 0, value, value * self._slope(i))
        z = np.concatenate(hidden, axis=1) if hidden else np.zeros((len(x), 0))
        return z, value

    def local_affine(self, x: F64) -> tuple[F64, F64, F64, F64]:
        """At one point ``x`` ``[d]``: the pre-activations and logits as affine functions of the
        input on ``x``'s linear region: ``(Z [H, d], z0 [H], F [O, d], f0 [O])``."""
        jac: F64 | None = None  # the identity, never formed: the first layer's rows are W
        off = np.zeros(len(x))
        value = x.astype(np.float64)
        rows: list[F64] = []
        offs: list[F64] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            jac, off = (w if jac is None else w @ jac), w @ off + b
            value = w @ value + b
            if i < len(self.weights) - 1:
                rows.append(jac)
                offs.append(off)
                mask = np.where(value >= 0, 1.0, self._slope(i))
                jac, off, value = jac * mask[:, None], off * mask, value * mask
        z_rows = np.concatenate(rows) if rows else np.zeros((0, len(x)))
        z_off = np.concatenate(offs) if offs else np.zeros(0)
        assert jac is not None  # a head has at least its logit layer
        return z_rows, z_off, jac, off

    def max_error(self, x: F64, z: F64, logits: F64) -> float:
        """Largest relative disagreement with onnxruntime's ``z`` and ``logits`` on ``x``."""
        pz, pl = self.forward(x)
        scale = 1.0 + max(float(np.abs(logits).max(initial=0)), float(np.abs(z).max(initial=0)))
        err = max(float(np.abs(pz - z).max(initial=0)), float(np.abs(pl - logits).max(initial=0)))
        return err / scale


class _Graph:
    """Constants (initializers and ``Constant`` outputs) of one graph."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.values: dict[str, NDArray[Any]] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.values[node.output[0]] = numpy_helper.to_array(attr.t)

    def const(self, node: Any, position: int) -> NDArray[Any] | None:
        if position >= len(node.input) or not node.input[position]:
            return None
        name = node.input[position]
        if name not in self.values:
            raise CheckUnavailable(f"head parse: {name[:60]!r} is not a constant")
        return np.asarray(self.values[name])


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _refuse(node: Any, why: str) -> CheckUnavailable:
    return CheckUnavailable(f"head parse: {node.op_type} {node.name[:50]!r}: {why}")


def _axes(node: Any, graph: _Graph, x: F64) -> list[int] | None:
    raw = _attr(node, "axes", None)
    if raw is None:
        const = graph.const(node, 1)
        raw = None if const is None else const.reshape(-1).tolist()
    if raw is None:
        return None
    axes = sorted(int(a) % x.ndim for a in raw)
    if 0 in axes:
        raise _refuse(node, "acts on the batch axis")
    return axes


def _gemm(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    if dyn != 0 or int(_attr(node, "transA", 0)) or x.ndim != 2:
        raise _refuse(node, "only a computed [batch, features] A operand is parsed")
    b = np.asarray(graph.const(node, 1), dtype=np.float64)
    b = b.T if int(_attr(node, "transB", 0)) else b
    y = float(_attr(node, "alpha", 1.0)) * (x @ b)
    c = graph.const(node, 2)
    if c is not None:
        y = y + float(_attr(node, "beta", 1.0)) * np.asarray(c, dtype=np.float64)
    return np.asarray(y)


def _matmul(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    w = np.asarray(graph.const(node, 1 - dyn), dtype=np.float64)
    if dyn != 0 or w.ndim != 2:
        raise _refuse(node, "only computed @ constant matrix is parsed")
    return np.asarray(x @ w)


def _elementwise(op: Callable[[F64, F64], F64], *, right_only: bool = False) -> Any:
    def apply(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
        if right_only and dyn != 0:
            raise _refuse(node, "the computed tensor must be the left operand")
        other = np.asarray(graph.const(node, 1 - dyn), dtype=np.float64)
        y = op(x, other) if dyn == 0 else op(other, x)
        if y.shape != x.shape:
            raise _refuse(node, "a constant operand must not change the shape")
        return y

    return apply


def _conv(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    import torch

    w = np.asarray(graph.const(node, 1), dtype=np.float64)
    spatial = w.ndim - 2
    pads = [int(p) for p in _attr(node, "pads", [0] * (2 * spatial))]
    if dyn != 0 or spatial not in (1, 2) or _attr(node, "auto_pad", "NOTSET") != "NOTSET":
        raise _refuse(node, "only 1-D/2-D convolutions with explicit pads are parsed")
    if pads[:spatial] != pads[spatial:]:
        raise _refuse(node, "asymmetric pads")
    b = graph.const(node, 2)
    conv = torch.nn.functional.conv1d if spatial == 1 else torch.nn.functional.conv2d
    y = conv(
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(w),
        None if b is None else torch.from_numpy(np.asarray(b, dtype=np.float64)),
        stride=tuple(int(s) for s in _attr(node, "strides", [1] * spatial)),
        padding=tuple(pads[:spatial]),
        dilation=tuple(int(d) for d in _attr(node, "dilations", [1] * spatial)),
        groups=int(_attr(node, "group", 1)),
    )
    return np.asarray(y.numpy())


def _batchnorm(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    scale, bias, mean, var = (
        np.asarray(graph.const(node, i), dtype=np.float64) for i in range(1, 5)
    )
    shape = (1, -1) + (1,) * (x.ndim - 2)
    factor = scale / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))
    return np.asarray((x - mean.reshape(shape)) * factor.reshape(shape) + bias.reshape(shape))


def _average_pool(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    import torch

    spatial = x.ndim - 2
    kernel = [int(k) for k in _attr(node, "kernel_shape", [])]
    pads = [int(p) for p in _attr(node, "pads", [0] * (2 * spatial))]
    if (
        spatial not in (1, 2)
        or len(kernel) != spatial
        or pads[:spatial] != pads[spatial:]
        or int(_attr(node, "ceil_mode", 0))
        or _attr(node, "auto_pad", "NOTSET") != "NOTSET"
    ):
        raise _refuse(node, "only plain 1-D/2-D pooling with symmetric explicit pads is parsed")
    pool = torch.nn.functional.avg_pool1d if spatial == 1 else torch.nn.functional.avg_pool2d
    y = pool(
        torch.from_numpy(np.ascontiguousarray(x)),
        kernel_size=tuple(kernel),
        stride=tuple(int(s) for s in _attr(node, "strides", [1] * spatial)),
        padding=tuple(pads[:spatial]),
        count_include_pad=bool(int(_attr(node, "count_include_pad", 0))),
    )
    return np.asarray(y.numpy())


def _reduce(kind: str) -> Any:
    def apply(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
        axes = _axes(node, graph, x)
        if axes is None:
            raise _refuse(node, "reduces over every axis")
        keep = bool(int(_attr(node, "keepdims", 1)))
        fn = np.mean if kind == "mean" else np.sum
        return np.asarray(fn(x, axis=tuple(axes), keepdims=keep))

    return apply


def _reshape(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    shape = [int(s) for s in np.asarray(graph.const(node, 1)).reshape(-1)]
    allowzero = int(_attr(node, "allowzero", 0))
    if not shape or shape[0] not in (0, -1) or (allowzero and 0 in shape):
        raise _refuse(node, f"target shape {shape} does not keep the batch axis")
    dims = [x.shape[i + 1] if s == 0 else s for i, s in enumerate(shape[1:])]
    try:
        return x.reshape(len(x), *dims)
    except ValueError as exc:
        raise _refuse(node, f"cannot reshape {x.shape[1:]} to {shape}") from exc


def _transpose(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    perm = [int(p) for p in _attr(node, "perm", list(range(x.ndim))[::-1])]
    if perm[0] != 0:
        raise _refuse(node, "moves the batch axis")
    return np.ascontiguousarray(x.transpose(perm))


def _squeeze(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    axes = _axes(node, graph, x)
    axes = [i for i in range(1, x.ndim) if x.shape[i] == 1] if axes is None else axes
    return np.asarray(x.squeeze(axis=tuple(axes)))


def _unsqueeze(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    raw = _attr(node, "axes", None)
    raw = np.asarray(graph.const(node, 1)).reshape(-1).tolist() if raw is None else raw
    rank = x.ndim + len(raw)
    y = x
    for axis in sorted(int(a) % rank for a in raw):
        if axis == 0:
            raise _refuse(node, "inserts an axis before the batch")
        y = np.expand_dims(y, axis)
    return y


def _concat(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    axis = int(_attr(node, "axis", 0)) % x.ndim
    if axis == 0:
        raise _refuse(node, "concatenates along the batch axis")
    parts = [
        x
        if i == dyn
        else np.broadcast_to(
            np.asarray(graph.const(node, i), dtype=np.float64),
            (len(x), *np.asarray(graph.const(node, i)).shape[1:]),
        )
        for i in range(len(node.input))
    ]
    return np.concatenate(parts, axis=axis)


def _flatten(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    if int(_attr(node, "axis", 1)) != 1:
        raise _refuse(node, "axis != 1")
    return x.reshape(len(x), -1)


def _cast(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    if int(_attr(node, "to", 0)) != 1:  # TensorProto.FLOAT
        raise _refuse(node, "a Cast to a type other than float32")
    return x


def _identity(node: Any, graph: _Graph, x: F64, dyn: int) -> F64:
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        raise _refuse(node, "a training_mode input")
    return x


_OPS: dict[str, Any] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _elementwise(lambda a, b: a + b),
    "Sub": _elementwise(lambda a, b: a - b),
    "Mul": _elementwise(lambda a, b: a * b),
    "Div": _elementwise(lambda a, b: a / b, right_only=True),
    "Neg": lambda node, graph, x, dyn: -x,
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "AveragePool": _average_pool,
    "GlobalAveragePool": lambda node, graph, x, dyn: x.mean(
        axis=tuple(range(2, x.ndim)), keepdims=True
    ),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Cast": _cast,
    "Identity": _identity,
    "Dropout": _identity,
}


def _join(node: Any, graph: _Graph, inputs: dict[int, F64]) -> F64:
    """A node reading several computed tensors (a residual join): Add, Sub and Sum of equal
    shapes, Concat (with constant operands broadcast over the batch). On the same evaluation
    points the join of affine maps is affine."""
    arrays = [inputs[i] for i in sorted(inputs)]
    if node.op_type in ("Add", "Sub", "Sum"):
        if len({a.shape for a in arrays}) != 1:
            raise _refuse(node, "joins tensors of different shapes")
        if node.op_type == "Sub":
            if len(arrays) != 2:
                raise _refuse(node, "Sub of more than two tensors")
            return arrays[0] - arrays[1]
        if node.op_type == "Add" and len(arrays) != 2:
            raise _refuse(node, "Add of more than two tensors")
        if len(arrays) != len([n for n in node.input if n]):
            raise _refuse(node, "Sum with constant operands")
        total = arrays[0].copy()
        for a in arrays[1:]:
            total = total + a
        return total
    if node.op_type == "Concat":
        batch = len(arrays[0])
        axis = int(_attr(node, "axis", 0)) % arrays[0].ndim
        if axis == 0:
            raise _refuse(node, "concatenates along the batch axis")
        parts = []
        for i in range(len(node.input)):
            if i in inputs:
                parts.append(inputs[i])
            else:
                const = np.asarray(graph.const(node, i), dtype=np.float64)
                parts.append(np.broadcast_to(const, (batch, *const.shape[1:])))
        return np.concatenate(parts, axis=axis)
    raise _refuse(node, "combines computed tensors (only Add/Sub/Sum/Concat joins are affine)")


def _slope(node: Any, graph: _Graph, shape: tuple[int, ...]) -> F64:
    size = int(np.prod(shape))
    if node.op_type in ("Relu", "Clip"):
        return np.zeros(size)
    if node.op_type == "LeakyRelu":
        return np.full(size, float(_attr(node, "alpha", 0.01)))
    slope = np.asarray(graph.const(node, 1), dtype=np.float64)
    try:
        return np.broadcast_to(slope, (1, *shape)).reshape(-1).copy()
    except ValueError as exc:
        raise _refuse(node, f"slope {slope.shape} does not fit {shape}") from exc


def _points(width: int) -> F64:
    """Evaluation points ``0, e_1, ..., e_width`` (rows)."""
    return np.vstack([np.zeros((1, width)), np.eye(width)])


def parse_head(original: Any, head: Head, cut_shape: tuple[int, ...] | None = None) -> AffineHead:
    """Parse the head of ``original`` (nodes ``head.nodes``, layers ``head.layers``) on cut
    values of per-sample shape ``cut_shape`` (default: the shape declared for the graph input
    when the cut is the input, else from shape inference). Each stage (the nodes between two
    hidden layers) is evaluated on the points ``0, e_i`` of its input space: the previous
    layer's activated units (breakpoints through their activation, carried tensors as they
    are). Raises :class:`CheckUnavailable` naming the first node that is not an affine step,
    a join or an activation."""
    graph = _Graph(original.graph)
    nodes = {index: original.graph.node[index] for index in head.nodes}
    depth = {head.cut: 0}
    for _index, node in nodes.items():
        computed = [i for i, name in enumerate(node.input) if name in depth]
        others = [n for i, n in enumerate(node.input) if i not in computed and n]
        if not computed or any(n not in graph.values for n in others):
            raise CheckUnavailable(f"head parse: node {node.name[:50]!r} reads a non-constant")
        if node.op_type in _ACTIVATIONS:
            if computed != [0]:
                raise _refuse(node, "the computed tensor is not the data input")
            depth[node.output[0]] = depth[node.input[0]] + 1
        else:
            depth[node.output[0]] = max(depth[node.input[i]] for i in computed)
    if head.output not in depth or depth[head.output] != len(head.layers):
        raise CheckUnavailable("head parse: the head does not end at the logits")
    shape = cut_shape if cut_shape is not None else _input_shape(original, head)
    d = int(np.prod(shape))
    values: dict[str, F64] = {head.cut: _points(d).reshape(d + 1, *shape)}
    weights: list[F64] = []
    biases: list[F64] = []
    slopes: list[F64] = []
    entry = 0
    for stage in range(len(head.layers) + 1):
        for node in nodes.values():
            if node.op_type in _ACTIVATIONS or depth[node.output[0]] != stage:
                continue
            missing = [n for n in node.input if n in depth and n not in values]
            if missing:
                raise CheckUnavailable(
                    f"head parse: {missing[0][:60]!r} is not a unit of the layer before "
                    f"node {node.name[:50]!r}"
                )
            operands = {i: values[n] for i, n in enumerate(node.input) if n in depth}
            if len(operands) == 1:
                if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
                    raise _refuse(node, "not an affine op the verifier parses")
                ((dyn, x),) = operands.items()
                y = np.asarray(_OPS[node.op_type](node, graph, x, dyn), dtype=np.float64)
            else:
                y = np.asarray(_join(node, graph, operands), dtype=np.float64)
            if y.size > _MAX_BASIS:
                raise _refuse(node, "the head is too large to parse densely")
            values[node.output[0]] = y
        if stage == len(head.layers):
            break
        units = head.layers[stage]
        offsets = [head.offset(entry + i) for i in range(len(units))]
        entry += len(units)
        flat = [
            values[name].reshape(len(values[name]), -1) - off
            for (name, _), off in zip(units, offsets, strict=True)
        ]
        stacked = np.hstack(flat)
        weights.append((stacked[1:] - stacked[0]).T.copy())
        biases.append(stacked[0].copy())
        slopes.append(
            np.concatenate(
                [
                    np.ones(f.shape[1])
                    if act < 0
                    else _slope(original.graph.node[act], graph, values[name].shape[1:])
                    for (name, act), f in zip(units, flat, strict=True)
                ]
            )
        )
        width = stacked.shape[1]
        points = _points(width)
        nxt: dict[str, F64] = {}
        column = 0
        for (name, act), f, off in zip(units, flat, offsets, strict=True):
            piece = points[:, column : column + f.shape[1]].reshape(
                width + 1, *values[name].shape[1:]
            )
            column += f.shape[1]
            out_name = name if act < 0 else original.graph.node[act].output[0]
            if act >= 0 and original.graph.node[act].op_type == "Clip":
                # first unit t - min: min + relu(.); second unit t - max: minus relu(.)
                nxt[out_name] = nxt[out_name] - piece if out_name in nxt else piece + off
            else:
                nxt[out_name] = piece
        values = nxt
    out = values[head.output].reshape(len(values[head.output]), -1)
    weights.append((out[1:] - out[0]).T.copy())
    biases.append(out[0].copy())
    for prev, nxt_w in itertools.pairwise(weights):
        if prev.shape[0] != nxt_w.shape[1]:
            raise CheckUnavailable("head parse: layer widths do not chain")
    return AffineHead(tuple(weights), tuple(biases), tuple(slopes))


def _input_shape(original: Any, head: Head) -> tuple[int, ...]:
    """Per-sample shape of the cut: declared for the graph input, inferred otherwise."""
    import onnx

    if head.cut == head.input:
        infos = list(original.graph.input)
    else:
        try:
            inferred = onnx.shape_inference.infer_shapes(original)
        except Exception as exc:  # onnx raises its own InferenceError types
            raise CheckUnavailable(f"head parse: shape inference fails ({exc})") from exc
        infos = [*inferred.graph.value_info, *inferred.graph.output]
    for info in infos:
        if info.name == head.cut:
            dims = info.type.tensor_type.shape.dim[1:]
            if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                return tuple(int(d.dim_value) for d in dims)
    raise CheckUnavailable(f"head parse: the shape of the cut {head.cut[:60]!r} is not known")
