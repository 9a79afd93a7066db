"""An ONNX graph as a trainable torch module with *fresh* weights: reference models of the
target's own architecture, whatever that architecture is.

The auditor reads the target's ONNX file (never the owner's code) and rebuilds the subgraph that
computes the logits as an ``nn.Module`` that interprets the nodes in order. Initializers that
are learned weights become freshly initialised ``nn.Parameter``s, drawn like torch's own layers
(``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases, BatchNorm scale 1 / shift 0 with
running mean 0 and variance 1); every other constant (a reshape target, a normalisation the
graph applies to its input) is copied as a fixed buffer, since it is architecture, not training.

Learned weights: input ``B`` (and ``C``) of ``Gemm``, input ``B`` of ``MatMul``, ``W`` (and ``B``)
of ``Conv``, a constant operand of an ``Add`` fed by one of those (a bias), and the four tensors of
``BatchNormalization``.

The logits tensor: the metadata ``prune.original_output`` when present (a PRUNE-patched model:
its reference models copy the original network, without the patch), else the first float
graph output, followed back through ``Identity``/``Softmax``/``LogSoftmax`` (an exported
classifier that outputs probabilities, e.g. skl2onnx's MLP, is trained on the logits before the
softmax).

Op set: Gemm, MatMul, Add, Sub, Mul, Div, Relu, LeakyRelu, Sigmoid, Tanh, Identity, Dropout,
Cast (to float), Flatten, Reshape (constant shape), Transpose, Concat, Conv, MaxPool,
AveragePool, GlobalAveragePool, GlobalMaxPool, BatchNormalization, Constant. Anything else is a
one-line error naming the op. ``mode="copy"`` keeps the file's weights instead (the tests use it
to check the conversion against onnxruntime).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import InputError
from audit.sandbox import has_external_data

__all__ = ["SUPPORTED_OPS", "OnnxModule", "logits_tensor"]

_WEIGHT_INPUTS = {
    "Gemm": (1, 2),
    "MatMul": (1,),
    "Conv": (1, 2),
    "BatchNormalization": (1, 2, 3, 4),
}
_FOLLOW_BACK = frozenset({"Identity", "Softmax", "LogSoftmax"})


def _load(model: bytes | Any) -> Any:
    import onnx

    if not isinstance(model, bytes):
        proto = model
    else:
        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:  # protobuf DecodeError and friends
            raise InputError(f"cannot read the ONNX model: {exc.__class__.__name__}") from exc
    if has_external_data(proto):  # decoding it would open a path on the auditor's disk
        raise InputError("the ONNX model stores tensors as external data, which is refused")
    return proto


def logits_tensor(proto: Any) -> str:
    """The name of the tensor holding the logits (see the module docstring)."""
    import onnx

    graph = proto.graph
    meta = {p.key: p.value for p in proto.metadata_props}
    if "prune.original_output" in meta:
        return str(meta["prune.original_output"])
    floats = [
        o.name for o in graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ]
    if not floats:
        raise InputError("the ONNX model has no float output to read logits from")
    name = floats[0]
    producer = {out: node for node in graph.node for out in node.output}
    while name in producer and producer[name].op_type in _FOLLOW_BACK:
        name = producer[name].input[0]
    return str(name)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class OnnxModule(nn.Module):
    """The subgraph of ``model`` that computes the logits, as a torch module."""

    def __init__(self, model: bytes | Any, *, mode: Literal["fresh", "copy"] = "fresh") -> None:
        super().__init__()
        import onnx.numpy_helper

        proto = _load(model)
        graph = proto.graph
        self.output = logits_tensor(proto)
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        producer = {out: node for node in graph.node for out in node.output}
        needed: set[str] = set()
        stack = [self.output]
        nodes: set[int] = set()
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            node = producer.get(name)
            if node is not None and id(node) not in nodes:
                nodes.add(id(node))
                stack.extend(i for i in node.input if i)
        self.nodes = [n for n in graph.node if id(n) in nodes]
        for node in self.nodes:
            if node.op_type not in SUPPORTED_OPS:
                raise InputError(
                    f"cannot build reference models from this graph: op {node.op_type} is not "
                    f"supported (supported: {', '.join(sorted(SUPPORTED_OPS))})"
                )
            if node.op_type == "Constant":
                consts[node.output[0]] = onnx.numpy_helper.to_array(_attrs(node)["value"])
        inputs = [i.name for i in graph.input if i.name not in consts and i.name in needed]
        if len(inputs) != 1:
            raise InputError(f"the logits depend on {len(inputs)} graph inputs; need exactly 1")
        self.input = inputs[0]
        self.attrs = [_attrs(n) for n in self.nodes]
        self.params = nn.ParameterDict()
        self._names: dict[str, str] = {}
        learned = self._learned(consts, producer)
        for name, value in consts.items():
            if name not in needed or not np.issubdtype(value.dtype, np.floating):
                continue
            key = f"t{len(self._names)}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)[:40]
            self._names[name] = key
            tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            if name in learned:
                if mode == "fresh":
                    tensor = _fresh(learned[name], tensor)
                role = learned[name][0]
                if role in ("bn_mean", "bn_var"):
                    self.register_buffer(key, tensor)
                else:
                    self.params[key] = nn.Parameter(tensor)
            else:
                self.register_buffer(key, tensor)
        self.ints = {
            name: [int(v) for v in np.asarray(value).ravel()]
            for name, value in consts.items()
            if name in needed and np.issubdtype(value.dtype, np.integer)
        }

    def _learned(
        self, consts: dict[str, Any], producer: dict[str, Any]
    ) -> dict[str, tuple[str, int]]:
        """Learned initializers -> (role, fan_in)."""
        out: dict[str, tuple[str, int]] = {}
        fan_of: dict[str, int] = {}  # output tensor of a weight layer -> its fan-in
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            op, ins = node.op_type, list(node.input)
            if op in ("Gemm", "MatMul") and len(ins) > 1 and ins[1] in consts:
                shape = consts[ins[1]].shape
                if len(shape) != 2:
                    continue
                fan = int(shape[1] if attrs.get("transB", 0) else shape[0])
                out[ins[1]] = ("weight", fan)
                if op == "Gemm" and len(ins) > 2 and ins[2] in consts:
                    out[ins[2]] = ("bias", fan)
                fan_of[node.output[0]] = fan
            elif op == "Conv" and ins[1] in consts:
                fan = int(np.prod(consts[ins[1]].shape[1:]))
                out[ins[1]] = ("weight", fan)
                if len(ins) > 2 and ins[2] in consts:
                    out[ins[2]] = ("bias", fan)
                fan_of[node.output[0]] = fan
            elif op == "BatchNormalization":
                for name, role in zip(
                    ins[1:5], ("bn_scale", "bn_bias", "bn_mean", "bn_var"), strict=True
                ):
                    if name in consts:
                        out[name] = (role, 1)
            elif op == "Add":
                a, b = ins
                if b in consts and a in fan_of:
                    out[b] = ("bias", fan_of[a])
                elif a in consts and b in fan_of:
                    out[a] = ("bias", fan_of[b])
        return out

    def _value(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        key = self._names.get(name)
        if key is None:
            raise InputError(f"tensor {name!r} is neither computed nor a float constant")
        if key in self.params:
            param: torch.Tensor = self.params[key]
            return param
        value: torch.Tensor = getattr(self, key)
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input: x}
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            if node.op_type == "Constant":
                continue
            env[node.output[0]] = SUPPORTED_OPS[node.op_type](self, env, node, attrs)
        return env[self.output]

    def ints_of(self, name: str) -> list[int]:
        if name not in self.ints:
            raise InputError(f"{name!r} must be a constant integer tensor (e.g. a Reshape shape)")
        return self.ints[name]


def _fresh(spec: tuple[str, int], like: torch.Tensor) -> torch.Tensor:
    role, fan = spec
    if role in ("weight", "bias"):
        bound = 1.0 / math.sqrt(max(fan, 1))
        return torch.empty_like(like).uniform_(-bound, bound)
    if role in ("bn_scale", "bn_var"):
        return torch.ones_like(like)
    return torch.zeros_like(like)


Op = Callable[[OnnxModule, dict[str, torch.Tensor], Any, dict[str, Any]], torch.Tensor]


def _ins(m: OnnxModule, env: dict[str, torch.Tensor], node: Any) -> list[torch.Tensor]:
    return [m._value(env, n) for n in node.input if n]


def _gemm(
    m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
) -> torch.Tensor:
    a, b, *c = _ins(m, env, node)
    a = a.t() if at.get("transA", 0) else a
    b = b.t() if at.get("transB", 0) else b
    y = float(at.get("alpha", 1.0)) * (a @ b)
    return y + float(at.get("beta", 1.0)) * c[0] if c else y


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    def op(
        m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
    ) -> torch.Tensor:
        a, b = _ins(m, env, node)
        return fn(a, b)

    return op


def _unary(fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]) -> Op:
    def op(
        m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
    ) -> torch.Tensor:
        return fn(m._value(env, node.input[0]), at)

    return op


def _dropout(
    m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
) -> torch.Tensor:
    ratio = float(at.get("ratio", 0.5))
    if len(node.input) > 1 and node.input[1]:
        ratio = float(m._value(env, node.input[1]))
    return F.dropout(m._value(env, node.input[0]), p=ratio, training=m.training)


def _cast(x: torch.Tensor, at: dict[str, Any]) -> torch.Tensor:
    if int(at.get("to", 1)) != 1:  # TensorProto.FLOAT
        raise InputError("only Cast to float is supported on the logits path")
    return x.float()


def _flatten(x: torch.Tensor, at: dict[str, Any]) -> torch.Tensor:
    axis = int(at.get("axis", 1))
    axis = axis if axis >= 0 else x.dim() + axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _reshape(
    m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
) -> torch.Tensor:
    x = m._value(env, node.input[0])
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(m.ints_of(node.input[1]))]
    if shape and shape[0] not in (-1, x.shape[0]) and -1 not in shape[1:]:
        shape[0] = -1  # a batch size baked in at export: keep the batch axis dynamic
    return x.reshape(shape)


def _spatial(at: dict[str, Any], dims: int) -> tuple[list[int], list[int], list[int], list[int]]:
    auto = at.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else str(auto)) not in ("NOTSET", "VALID"):
        raise InputError("only explicit padding (auto_pad NOTSET/VALID) is supported")
    pads = [int(p) for p in at.get("pads", [0] * (2 * dims))]
    strides = [int(s) for s in at.get("strides", [1] * dims)]
    dil = [int(d) for d in at.get("dilations", [1] * dims)]
    kernel = [int(k) for k in at.get("kernel_shape", [])]
    return pads, strides, dil, kernel


def _pad(
    x: torch.Tensor, pads: Sequence[int], value: float = 0.0
) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads are returned for the op; asymmetric ones are applied here."""
    dims = len(pads) // 2
    begin, end = list(pads[:dims]), list(pads[dims:])
    if begin == end:
        return x, begin
    torch_pads: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, value=value), [0] * dims


def _conv(
    m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
) -> torch.Tensor:
    x, w, *b = _ins(m, env, node)
    dims = w.dim() - 2
    pads, strides, dil, _ = _spatial(at, dims)
    x, sym = _pad(x, pads)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(dims)
    if fn is None:
        raise InputError(f"Conv with {dims} spatial dimensions is not supported")
    out: torch.Tensor = fn(x, w, b[0] if b else None, strides, sym, dil, int(at.get("group", 1)))
    return out


def _pool(kind: str) -> Op:
    def op(
        m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
    ) -> torch.Tensor:
        x = m._value(env, node.input[0])
        dims = x.dim() - 2
        pads, strides, dil, kernel = _spatial(at, dims)
        ceil = bool(at.get("ceil_mode", 0))
        if kind == "max":
            x, sym = _pad(x, pads, value=float("-inf"))
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
            out: torch.Tensor = fn(x, kernel, strides, sym, dil, ceil_mode=ceil)
            return out
        if any(d != 1 for d in dil):
            raise InputError("AveragePool with dilations is not supported")
        include = bool(at.get("count_include_pad", 0))
        x, sym = _pad(x, pads) if include else (x, pads[:dims])
        if not include and pads[:dims] != pads[dims:]:
            raise InputError("AveragePool with asymmetric padding excluded from the count")
        fn2 = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        out2: torch.Tensor = fn2(x, kernel, strides, sym, ceil, include)
        return out2

    return op


def _batchnorm(
    m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
) -> torch.Tensor:
    x = m._value(env, node.input[0])
    scale, bias = m._value(env, node.input[1]), m._value(env, node.input[2])
    mean, var = m._value(env, node.input[3]), m._value(env, node.input[4])
    return F.batch_norm(
        x,
        mean,
        var,
        scale,
        bias,
        training=m.training,
        momentum=1.0 - float(at.get("momentum", 0.9)),
        eps=float(at.get("epsilon", 1e-5)),
    )


def _concat(
    m: OnnxModule, env: dict[str, torch.Tensor], node: Any, at: dict[str, Any]
) -> torch.Tensor:
    return torch.cat(_ins(m, env, node), dim=int(at.get("axis", 0)))


SUPPORTED_OPS: dict[str, Op] = {
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Relu": _unary(lambda x, at: F.relu(x)),
    "LeakyRelu": _unary(lambda x, at: F.leaky_relu(x, float(at.get("alpha", 0.01)))),
    "Sigmoid": _unary(lambda x, at: torch.sigmoid(x)),
    "Tanh": _unary(lambda x, at: torch.tanh(x)),
    "Identity": _unary(lambda x, at: x),
    "Dropout": _dropout,
    "Cast": _unary(_cast),
    "Flatten": _unary(_flatten),
    "Reshape": _reshape,
    "Transpose": _unary(
        lambda x, at: (
            x.permute(*[int(p) for p in at["perm"]])
            if "perm" in at
            else x.permute(*reversed(range(x.dim())))
        )
    ),
    "Concat": _concat,
    "Conv": _conv,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _unary(lambda x, at: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _unary(lambda x, at: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "BatchNormalization": _batchnorm,
    "Constant": _unary(lambda x, at: x),  # folded into the constants at build time
}
