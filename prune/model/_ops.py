"""Float64 evaluators for the affine ONNX ops allowed in the patched head.

Each evaluator maps a batch ``x`` ``[N, *shape]`` (the one computed input of the node) to the
node's output, with every other input read from the graph's constants. An op is allowed here only
if it is affine in its computed input (so the head between two Relu nodes is one affine map), and
each evaluator follows the ONNX operator specification for the attributes it accepts; any other
attribute value raises :class:`ModelImportError` naming the node rather than being guessed at."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prune.errors import ModelImportError
from prune.model._graph import describe_node

__all__ = ["AFFINE_OPS", "JOIN_OPS", "NodeCall"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class NodeCall:
    """One head node to evaluate: the node, its position, which input is computed, and the
    constants of the graph (initializers and ``Constant`` outputs)."""

    node: Any
    index: int
    dynamic_input: int
    constants: Mapping[str, NDArray[Any]]

    @property
    def label(self) -> str:
        return describe_node(self.node, self.index)

    def const(self, position: int) -> NDArray[Any] | None:
        if position >= len(self.node.input) or not self.node.input[position]:
            return None
        name = self.node.input[position]
        if name not in self.constants:
            raise ModelImportError(
                f"{self.label}: input '{name}' must be a constant (initializer) to be patched"
            )
        return self.constants[name]

    def attr(self, name: str, default: Any) -> Any:
        from onnx import helper

        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def reject(self, why: str) -> ModelImportError:
        return ModelImportError(f"{self.label} cannot be patched: {why}")


def _require_vector(call: NodeCall, x: Array) -> None:
    if x.ndim != 2:
        raise call.reject(f"expects a [batch, features] input, got per-sample shape {x.shape[1:]}")


def _gemm(call: NodeCall, x: Array) -> Array:
    """``Y = alpha * A' B' + beta * C``: the computed tensor is ``A`` (``transA`` = 0, batch
    first) with a constant ``B`` in either orientation; ``C`` broadcasts (``[H]``, ``[1, H]``,
    scalar)."""
    if call.dynamic_input != 0:
        raise call.reject(
            "the computed tensor is Gemm's B operand (the batch would not be the first axis); "
            "re-export with the data as A"
        )
    if int(call.attr("transA", 0)) != 0:
        raise call.reject("transA=1 on the computed operand puts the batch on axis 1")
    _require_vector(call, x)
    b = np.asarray(call.const(1), dtype=np.float64)
    if b.ndim != 2:
        raise call.reject(f"the weight must be a matrix, got shape {b.shape}")
    if int(call.attr("transB", 0)):
        b = b.T
    y = float(call.attr("alpha", 1.0)) * (x @ b)
    c = call.const(2)
    if c is not None:
        bias = float(call.attr("beta", 1.0)) * np.asarray(c, dtype=np.float64)
        try:
            y = y + np.broadcast_to(bias, (1, y.shape[1]) if bias.ndim == 2 else y.shape[1:])
        except ValueError as exc:
            raise call.reject(f"bias of shape {bias.shape} does not fit {y.shape[1:]}") from exc
    return y


def _matmul(call: NodeCall, x: Array) -> Array:
    if call.dynamic_input != 0:
        raise call.reject("the computed tensor must be the left operand")
    if x.ndim < 2:
        raise call.reject("a per-sample scalar cannot be multiplied by a matrix")
    w = np.asarray(call.const(1), dtype=np.float64)
    if w.ndim != 2:
        raise call.reject(f"the weight must be a matrix, got shape {w.shape}")
    return x @ w


def _add(call: NodeCall, x: Array) -> Array:
    return _broadcast_checked(call, x, x + _other(call), "Add")


def _sub(call: NodeCall, x: Array) -> Array:
    other = _other(call)
    y = x - other if call.dynamic_input == 0 else other - x
    return _broadcast_checked(call, x, y, "Sub")


def _mul(call: NodeCall, x: Array) -> Array:
    return _broadcast_checked(call, x, x * _other(call), "Mul")


def _div(call: NodeCall, x: Array) -> Array:
    if call.dynamic_input != 0:
        raise call.reject("division by a computed tensor is not affine")
    return _broadcast_checked(call, x, x / _other(call), "Div")


def _neg(call: NodeCall, x: Array) -> Array:
    return -x


def _cast(call: NodeCall, x: Array) -> Array:
    from onnx import TensorProto

    if int(call.attr("to", 0)) != TensorProto.FLOAT:
        raise call.reject("only a Cast to float32 (the head's own type) is an identity")
    return x


def _transpose(call: NodeCall, x: Array) -> Array:
    perm = [int(p) for p in call.attr("perm", list(range(x.ndim))[::-1])]
    if sorted(perm) != list(range(x.ndim)) or perm[0] != 0:
        raise call.reject(f"perm {perm} must keep the batch axis first")
    return np.ascontiguousarray(x.transpose(perm))


def _axes(call: NodeCall, x: Array, *, input_position: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the second input (newer ones), normalised;
    the batch axis is refused."""
    raw = call.attr("axes", None)
    if raw is None:
        const = call.const(input_position)
        raw = None if const is None else np.asarray(const).reshape(-1).tolist()
    if raw is None:
        return None
    axes = sorted(int(a) % x.ndim for a in raw)
    if 0 in axes:
        raise call.reject("reducing or reshaping over the batch axis is not per-sample")
    return axes


def _reduce_mean(call: NodeCall, x: Array) -> Array:
    axes = _axes(call, x, input_position=1)
    if axes is None:
        if int(call.attr("noop_with_empty_axes", 0)):
            return x
        raise call.reject("reducing over every axis includes the batch axis")
    keep = bool(int(call.attr("keepdims", 1)))
    return np.asarray(x.mean(axis=tuple(axes), keepdims=keep))


def _reduce_sum(call: NodeCall, x: Array) -> Array:
    axes = _axes(call, x, input_position=1)
    if axes is None:
        if int(call.attr("noop_with_empty_axes", 0)):
            return x
        raise call.reject("reducing over every axis includes the batch axis")
    keep = bool(int(call.attr("keepdims", 1)))
    return np.asarray(x.sum(axis=tuple(axes), keepdims=keep))


def _global_average_pool(call: NodeCall, x: Array) -> Array:
    if x.ndim < 3:
        raise call.reject("expects [batch, channels, *spatial]")
    return np.asarray(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True))


def _average_pool(call: NodeCall, x: Array) -> Array:
    spatial = x.ndim - 2
    if spatial not in (1, 2):
        raise call.reject(f"only 1-D and 2-D pooling is supported (input {x.shape[1:]})")
    auto_pad = call.attr("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)) != "NOTSET":
        raise call.reject("auto_pad is not supported; export with explicit pads")
    if int(call.attr("ceil_mode", 0)):
        raise call.reject("ceil_mode=1 is not supported")
    if any(int(d) != 1 for d in call.attr("dilations", [1] * spatial)):
        raise call.reject("dilated pooling is not supported")
    kernel = [int(k) for k in call.attr("kernel_shape", [])]
    pads = [int(p) for p in call.attr("pads", [0] * (2 * spatial))]
    if len(kernel) != spatial or pads[:spatial] != pads[spatial:]:
        raise call.reject(f"kernel {kernel} / pads {pads} not supported (symmetric pads only)")
    pool = torch.nn.functional.avg_pool1d if spatial == 1 else torch.nn.functional.avg_pool2d
    y = pool(
        torch.from_numpy(np.ascontiguousarray(x)),
        kernel_size=tuple(kernel),
        stride=tuple(int(s) for s in call.attr("strides", [1] * spatial)),
        padding=tuple(pads[:spatial]),
        count_include_pad=bool(int(call.attr("count_include_pad", 0))),
    )
    return np.asarray(y.numpy())


def _squeeze(call: NodeCall, x: Array) -> Array:
    axes = _axes(call, x, input_position=1)
    if axes is None:
        axes = [i for i in range(1, x.ndim) if x.shape[i] == 1]
    if any(x.shape[a] != 1 for a in axes):
        raise call.reject(f"cannot squeeze axes {axes} of per-sample shape {x.shape[1:]}")
    return np.asarray(x.squeeze(axis=tuple(axes)))


def _unsqueeze(call: NodeCall, x: Array) -> Array:
    raw = call.attr("axes", None)
    if raw is None:
        const = call.const(1)
        raw = [] if const is None else np.asarray(const).reshape(-1).tolist()
    rank = x.ndim + len(raw)
    axes = sorted(int(a) % rank for a in raw)
    if 0 in axes:
        raise call.reject("inserting an axis before the batch axis")
    y = x
    for a in axes:
        y = np.expand_dims(y, a)
    return y


def _concat(call: NodeCall, x: Array) -> Array:
    axis = int(call.attr("axis", 0)) % x.ndim
    if axis == 0:
        raise call.reject("concatenating along the batch axis is not per-sample")
    parts: list[Array] = []
    for i in range(len(call.node.input)):
        if i == call.dynamic_input:
            parts.append(x)
            continue
        const = np.asarray(call.const(i), dtype=np.float64)
        if const.ndim != x.ndim or const.shape[0] != 1:
            raise call.reject("a constant Concat operand must have a batch axis of size 1")
        parts.append(np.broadcast_to(const, (len(x), *const.shape[1:])))
    return np.concatenate(parts, axis=axis)


def _other(call: NodeCall) -> Array:
    return np.asarray(call.const(1 - call.dynamic_input), dtype=np.float64)


def _broadcast_checked(call: NodeCall, x: Array, y: Array, op: str) -> Array:
    if y.shape != x.shape:
        raise call.reject(f"{op} with a constant must keep the shape {x.shape[1:]}")
    return y


def _identity(call: NodeCall, x: Array) -> Array:
    return x


def _flatten(call: NodeCall, x: Array) -> Array:
    if int(call.attr("axis", 1)) != 1:
        raise call.reject("only Flatten with axis=1 (keeping the batch axis) is supported")
    return x.reshape(len(x), -1)


def _reshape(call: NodeCall, x: Array) -> Array:
    shape = [int(s) for s in np.asarray(call.const(1)).reshape(-1)]
    if not shape or shape[0] not in (0, -1) or (shape[0] == 0 and int(call.attr("allowzero", 0))):
        raise call.reject(f"the target shape {shape} must keep the batch axis (0 or -1 first)")
    allowzero = int(call.attr("allowzero", 0))
    per_sample = [
        (x.shape[i + 1] if s == 0 and not allowzero else s) for i, s in enumerate(shape[1:])
    ]
    try:
        return x.reshape(len(x), *per_sample)
    except ValueError as exc:
        raise call.reject(f"cannot reshape per-sample shape {x.shape[1:]} to {shape}") from exc


def _dropout(call: NodeCall, x: Array) -> Array:
    if len(call.node.input) > 2 and call.node.input[2]:
        raise call.reject("a Dropout with a training_mode input is not inference-only")
    return x


def _batchnorm(call: NodeCall, x: Array) -> Array:
    if int(call.attr("training_mode", 0)):
        raise call.reject("BatchNormalization in training mode is not affine")
    scale, bias, mean, var = (np.asarray(call.const(i), dtype=np.float64) for i in range(1, 5))
    eps = float(call.attr("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    factor = (scale / np.sqrt(var + eps)).reshape(shape)
    return (x - mean.reshape(shape)) * factor + bias.reshape(shape)


def _conv(call: NodeCall, x: Array) -> Array:
    if call.dynamic_input != 0:
        raise call.reject("the computed tensor must be the data input")
    auto_pad = call.attr("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)) != "NOTSET":
        raise call.reject("auto_pad is not supported; export with explicit pads")
    w = torch.from_numpy(np.asarray(call.const(1), dtype=np.float64))
    b_arr = call.const(2)
    b = None if b_arr is None else torch.from_numpy(np.asarray(b_arr, dtype=np.float64))
    spatial = w.ndim - 2
    if spatial not in (1, 2) or x.ndim != spatial + 2:
        raise call.reject(f"only 1-D and 2-D convolutions are supported (input {x.shape[1:]})")
    pads = list(call.attr("pads", [0] * (2 * spatial)))
    if pads[:spatial] != pads[spatial:]:
        raise call.reject(f"asymmetric pads {pads} are not supported")
    conv = torch.nn.functional.conv1d if spatial == 1 else torch.nn.functional.conv2d
    y = conv(
        torch.from_numpy(np.ascontiguousarray(x)),
        w,
        b,
        stride=tuple(call.attr("strides", [1] * spatial)),
        padding=tuple(pads[:spatial]),
        dilation=tuple(call.attr("dilations", [1] * spatial)),
        groups=int(call.attr("group", 1)),
    )
    return y.numpy()


AFFINE_OPS: dict[str, Callable[[NodeCall, Array], Array]] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    "Sub": _sub,
    "Mul": _mul,
    "Identity": _identity,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Dropout": _dropout,
    "BatchNormalization": _batchnorm,
    "Conv": _conv,
    "Div": _div,
    "Neg": _neg,
    "Cast": _cast,
    "Transpose": _transpose,
    "ReduceMean": _reduce_mean,
    "ReduceSum": _reduce_sum,
    "GlobalAveragePool": _global_average_pool,
    "AveragePool": _average_pool,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
}
"""Op type -> evaluator. The activations (``Relu``, ``LeakyRelu``, ``PRelu``) are not here:
they separate affine segments (see ``_head``)."""


def _same_shapes(call: NodeCall, inputs: Mapping[int, Array]) -> list[Array]:
    arrays = [inputs[i] for i in sorted(inputs)]
    if len({a.shape for a in arrays}) != 1:
        shapes = ", ".join(str(a.shape[1:]) for a in arrays)
        raise call.reject(f"joins computed tensors of different shapes ({shapes})")
    return arrays


def _join_add(call: NodeCall, inputs: Mapping[int, Array]) -> Array:
    a, b = _same_shapes(call, inputs)
    return a + b


def _join_sub(call: NodeCall, inputs: Mapping[int, Array]) -> Array:
    a, b = _same_shapes(call, inputs)
    return a - b


def _join_sum(call: NodeCall, inputs: Mapping[int, Array]) -> Array:
    if len(inputs) != len([n for n in call.node.input if n]):
        raise call.reject("a Sum of computed tensors and constants is not supported")
    return np.asarray(sum(_same_shapes(call, inputs)))


def _join_concat(call: NodeCall, inputs: Mapping[int, Array]) -> Array:
    first = inputs[min(inputs)]
    axis = int(call.attr("axis", 0)) % first.ndim
    if axis == 0:
        raise call.reject("concatenating along the batch axis is not per-sample")
    parts: list[Array] = []
    for i in range(len(call.node.input)):
        if i in inputs:
            parts.append(inputs[i])
            continue
        const = np.asarray(call.const(i), dtype=np.float64)
        if const.ndim != first.ndim or const.shape[0] != 1:
            raise call.reject("a constant Concat operand must have a batch axis of size 1")
        parts.append(np.broadcast_to(const, (len(first), *const.shape[1:])))
    return np.concatenate(parts, axis=axis)


JOIN_OPS: dict[str, Callable[[NodeCall, Mapping[int, Array]], Array]] = {
    "Add": _join_add,
    "Sub": _join_sub,
    "Sum": _join_sum,
    "Concat": _join_concat,
}
"""Affine ops of several computed inputs (residual joins), evaluated on the same basis points:
the sum (difference, concatenation) of affine maps is affine. Inputs by position."""
