"""The piecewise-linear head: the part of the graph from the cut tensor to the logits, as dense
affine layers with ReLU between them.

Invariant (checked by the tests against onnxruntime): for every cut value ``x`` (flattened),
``z_1 = W_1 x + b_1``, ``z_{l+1} = W_{l+1} ReLU(z_l) + b_{l+1}``, and the last layer gives the
logits; ``z_l`` are exactly the values of the tensors named ``hidden[l]`` (the Relu inputs) in
the ONNX graph, flattened. The head must be a chain: every tensor after the cut feeds exactly
one node, each node has exactly one computed input, and only affine ops and Relu occur."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError
from prune.model._graph import GraphIndex, describe_node
from prune.model._ops import AFFINE_OPS, NodeCall

__all__ = ["AffineLayer", "PLHead", "extract_head"]

Array = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class AffineLayer:
    """``y = weight @ x + bias`` on flattened vectors; float64, ``weight`` is ``[out, in]``."""

    weight: Array
    bias: Array


@dataclass(frozen=True, eq=False)
class PLHead:
    """The head after ``cut``: ``len(layers) == len(hidden) + 1``."""

    cut: str
    cut_shape: tuple[int, ...]
    hidden: tuple[str, ...]
    output: str
    layers: tuple[AffineLayer, ...]

    @property
    def input_dim(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def classes(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(int(layer.weight.shape[0]) for layer in self.layers[:-1])

    @property
    def n_hidden(self) -> int:
        return sum(self.hidden_sizes)

    def forward(self, x: Array) -> tuple[Array, Array]:
        """Logits ``[N, O]`` and concatenated pre-activations ``z`` ``[N, H]`` in float64."""
        h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        zs: list[Array] = []
        for layer in self.layers[:-1]:
            z = h @ layer.weight.T + layer.bias
            zs.append(z)
            h = np.maximum(z, 0.0)
        last = self.layers[-1]
        logits = h @ last.weight.T + last.bias
        z_all = np.concatenate(zs, axis=1) if zs else np.zeros((len(h), 0))
        return logits, z_all


def extract_head(index: GraphIndex, cut: str) -> PLHead:
    """Convert the graph after ``cut`` to a :class:`PLHead`, or raise naming the op and node."""
    if cut not in index.tensor_names():
        raise ModelImportError(f"the model has no tensor named '{cut}' to cut at")
    if cut in index.constants:
        raise ModelImportError(f"'{cut}' is a constant, not a computed tensor")
    chain = _chain(index, cut)
    shape = index.sample_shape(cut)
    segments: list[list[tuple[Any, int, int]]] = [[]]
    hidden: list[str] = []
    for node_index, dyn in chain:
        node = index.nodes[node_index]
        if node.op_type == "Relu":
            hidden.append(node.input[0])
            segments.append([])
        else:
            segments[-1].append((node, node_index, dyn))
    layers: list[AffineLayer] = []
    for seg in segments:
        layer, shape = _affine_segment(seg, shape, index)
        layers.append(layer)
    _check_dims(layers)
    return PLHead(
        cut=cut,
        cut_shape=index.sample_shape(cut),
        hidden=tuple(hidden),
        output=index.output_name,
        layers=tuple(layers),
    )


def _chain(index: GraphIndex, cut: str) -> list[tuple[int, int]]:
    """Nodes from ``cut`` to the graph output, each with the position of its computed input."""
    computed = {cut}
    for node in index.nodes:
        if any(name in computed for name in node.input):
            computed.update(o for o in node.output if o)
    if index.output_name not in computed:
        raise ModelImportError(f"the model output '{index.output_name}' does not depend on '{cut}'")
    chain: list[tuple[int, int]] = []
    tensor = cut
    while tensor != index.output_name:
        users = index.consumers.get(tensor, ())
        if len(users) != 1:
            where = ", ".join(describe_node(index.nodes[u], u) for u in users) or "nothing"
            raise ModelImportError(
                f"tensor '{tensor}' after the cut feeds {where}; the patched head must be a "
                "single chain (no branches or residual connections)"
            )
        node_index = users[0]
        node = index.nodes[node_index]
        label = describe_node(node, node_index)
        dynamic = [i for i, name in enumerate(node.input) if name in computed]
        if len(dynamic) != 1:
            raise ModelImportError(
                f"{label} combines {len(dynamic)} computed tensors; only one is supported after the cut"
            )
        if node.domain not in ("", "ai.onnx"):
            raise ModelImportError(f"unsupported op {node.domain}.{node.op_type} ({label})")
        if node.op_type != "Relu" and node.op_type not in AFFINE_OPS:
            kind = "non-ReLU activation" if node.op_type in _ACTIVATIONS else "unsupported op"
            raise ModelImportError(
                f"{kind} {node.op_type} ({label}) after the cut '{cut}'; the patched part may "
                "only use Gemm/MatMul/Add/Sub/Mul/Conv/Flatten/Reshape/BatchNormalization/Relu"
            )
        extra = [
            o for o in node.output[1:] if o and (o in index.consumers or o == index.output_name)
        ]
        if not node.output or extra:
            raise ModelImportError(f"{label} has {len(node.output)} used outputs; expected one")
        chain.append((node_index, dynamic[0]))
        tensor = node.output[0]
    return chain


_ACTIVATIONS = frozenset(
    {
        "Sigmoid",
        "Tanh",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Gelu",
        "Softplus",
        "Softsign",
        "HardSigmoid",
        "HardSwish",
        "Mish",
        "Clip",
        "Softmax",
        "LogSoftmax",
        "ThresholdedRelu",
        "Exp",
        "Log",
    }
)


def _affine_segment(
    seg: list[tuple[Any, int, int]], shape: tuple[int, ...], index: GraphIndex
) -> tuple[AffineLayer, tuple[int, ...]]:
    """Evaluate the nodes of one segment on the identity basis: ``b = seg(0)``,
    ``W[:, i] = seg(e_i) - b`` (exact for affine maps up to float64 rounding)."""
    d = int(np.prod(shape))
    basis = np.concatenate([np.zeros((1, d)), np.eye(d)]).reshape(d + 1, *shape)
    y = basis
    for node, node_index, dyn in seg:
        call = NodeCall(node=node, index=node_index, dynamic_input=dyn, constants=index.constants)
        y = AFFINE_OPS[node.op_type](call, y)
    out_shape = tuple(int(s) for s in y.shape[1:])
    flat = y.reshape(d + 1, -1)
    bias = flat[0].copy()
    weight = (flat[1:] - bias).T.copy()
    return AffineLayer(weight=weight, bias=bias), out_shape


def _check_dims(layers: list[AffineLayer]) -> None:
    for i in range(1, len(layers)):
        if layers[i].weight.shape[1] != layers[i - 1].weight.shape[0]:
            raise ModelImportError("internal: head layer sizes do not chain")
