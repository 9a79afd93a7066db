"""The piecewise-linear head: the part of the graph from the cut tensor to the logits, as dense
affine layers with ReLU between them.

Invariant (checked by the tests against onnxruntime): for every cut value ``x`` (flattened),
``z_1 = W_1 x + b_1``, ``z_{l+1} = W_{l+1} phi_l(z_l) + b_{l+1}``, and the last layer gives the
logits; ``z_l`` are exactly the values of the tensors named ``hidden[l]`` (the activation
inputs, the *breakpoint* tensors) in the ONNX graph, flattened. The activations are
``phi(z) = z`` for ``z >= 0`` and ``slope * z`` below: Relu (slope 0), LeakyRelu (``alpha``),
PRelu (its constant slope, broadcast per unit). The region of a point is the sign pattern of the
breakpoint tensors. The head must be a chain: every tensor after the cut feeds exactly one node,
each node has exactly one computed input, and only affine ops and those activations occur."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError
from prune.model._graph import GraphIndex, describe_node
from prune.model._ops import AFFINE_OPS, NodeCall

__all__ = ["ACTIVATIONS", "AffineLayer", "PLHead", "check_cut", "dense_entries", "extract_head"]

Array = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class AffineLayer:
    """``y = weight @ x + bias`` on flattened vectors; float64, ``weight`` is ``[out, in]``."""

    weight: Array
    bias: Array


@dataclass(frozen=True, eq=False)
class PLHead:
    """The head after ``cut``: ``len(layers) == len(hidden) + 1``. ``slopes[l]`` is the
    negative-side slope of each unit of hidden layer ``l`` (``[H_l]``; empty means Relu, 0)."""

    cut: str
    cut_shape: tuple[int, ...]
    hidden: tuple[str, ...]
    output: str
    layers: tuple[AffineLayer, ...]
    slopes: tuple[Array, ...] = ()

    def slope(self, layer: int) -> Array:
        """Negative-side slopes of hidden layer ``layer`` (``[H_l]``)."""
        if not self.slopes:
            return np.zeros(self.hidden_sizes[layer])
        return self.slopes[layer]

    @property
    def negative_slope(self) -> Array:
        """All hidden units' negative-side slopes, ``[H]`` (0 for Relu)."""
        if not self.slopes:
            return np.zeros(self.n_hidden)
        return np.concatenate([np.zeros(0), *self.slopes])

    @property
    def is_relu(self) -> bool:
        return not self.slopes or all(not s.any() for s in self.slopes)

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
        for i, layer in enumerate(self.layers[:-1]):
            z = h @ layer.weight.T + layer.bias
            zs.append(z)
            h = np.where(z >= 0.0, z, z * self.slope(i))
        last = self.layers[-1]
        logits = h @ last.weight.T + last.bias
        z_all = np.concatenate(zs, axis=1) if zs else np.zeros((len(h), 0))
        return logits, z_all


ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu"})
"""Piecewise-linear activations with one breakpoint at 0: they end an affine segment."""

MAX_DENSE_ENTRIES = 150_000_000
"""The default cut skips a candidate whose dense head would hold more float64 weights than this
(1.2 GB): a whole convolutional network as dense layers does not fit; a later cut does."""


def extract_head(index: GraphIndex, cut: str, *, require_activation: bool = True) -> PLHead:
    """Convert the graph after ``cut`` to a :class:`PLHead`, or raise naming the op and node."""
    chain = check_cut(index, cut, require_activation=require_activation)
    shape = index.sample_shape(cut)
    segments: list[list[tuple[Any, int, int]]] = [[]]
    activations: list[tuple[Any, int]] = []
    for node_index, dyn in chain:
        node = index.nodes[node_index]
        if node.op_type in ACTIVATIONS:
            activations.append((node, node_index))
            segments.append([])
        else:
            segments[-1].append((node, node_index, dyn))
    layers: list[AffineLayer] = []
    slopes: list[Array] = []
    for i, seg in enumerate(segments):
        layer, shape = _affine_segment(seg, shape, index)
        layers.append(layer)
        if i < len(activations):
            node, node_index = activations[i]
            slopes.append(_slope(node, node_index, shape, index))
    _check_dims(layers)
    return PLHead(
        cut=cut,
        cut_shape=index.sample_shape(cut),
        hidden=tuple(node.input[0] for node, _ in activations),
        output=index.output_name,
        layers=tuple(layers),
        slopes=tuple(slopes),
    )


def check_cut(
    index: GraphIndex, cut: str, *, require_activation: bool = True
) -> list[tuple[int, int]]:
    """The head's nodes after ``cut`` (each with the position of its computed input), checked
    without evaluating anything: a chain of affine ops and activations (with at least one
    activation when ``require_activation``: an affine head has a single region, the whole box,
    so its patch acts on every input). Raises :class:`ModelImportError` naming the op, the node
    and what to do."""
    if cut not in index.tensor_names():
        raise ModelImportError(f"the model has no tensor named '{cut}' to cut at")
    if cut in index.constants:
        raise ModelImportError(f"'{cut}' is a constant, not a computed tensor")
    tail = {o for i in index.tail for o in index.nodes[i].output}
    if cut in tail:
        raise ModelImportError(
            f"'{cut}' is in the output tail after the logits '{index.output_name}'; cut before it"
        )
    chain = _chain(index, cut)
    if require_activation and not any(index.nodes[i].op_type in ACTIVATIONS for i, _ in chain):
        raise ModelImportError(
            f"no Relu/LeakyRelu/PRelu after the cut '{cut}': the head is affine, so a patch "
            "would act on every input; cut earlier (`prune inspect MODEL` lists the cuts)"
        )
    return chain


def dense_entries(index: GraphIndex, cut: str, chain: list[tuple[int, int]]) -> int:
    """How many float64 weights the dense head after ``cut`` holds (from inferred shapes)."""
    sizes = [int(np.prod(index.sample_shape(cut)))]
    for node_index, _ in chain:
        node = index.nodes[node_index]
        if node.op_type in ACTIVATIONS:
            sizes.append(int(np.prod(index.sample_shape(node.input[0]))))
    sizes.append(int(np.prod(index.sample_shape(index.output_name))))
    return sum(a * b for a, b in itertools.pairwise(sizes))


def _slope(node: Any, node_index: int, shape: tuple[int, ...], index: GraphIndex) -> Array:
    """Negative-side slope of each unit of the activation ``node`` on a ``shape`` input."""
    size = int(np.prod(shape))
    if node.op_type == "Relu":
        return np.zeros(size)
    if node.op_type == "LeakyRelu":
        call = NodeCall(node=node, index=node_index, dynamic_input=0, constants=index.constants)
        return np.full(size, float(call.attr("alpha", 0.01)))
    call = NodeCall(node=node, index=node_index, dynamic_input=0, constants=index.constants)
    slope = np.asarray(call.const(1), dtype=np.float64)
    try:
        return np.broadcast_to(slope, (1, *shape)).reshape(-1).copy()
    except ValueError as exc:
        raise call.reject(f"slope of shape {slope.shape} does not fit {shape}") from exc


def _chain(index: GraphIndex, cut: str) -> list[tuple[int, int]]:
    """Nodes from ``cut`` to the logits, each with the position of its computed input."""
    computed = {cut}
    for node in index.nodes:
        if any(name in computed for name in node.input):
            computed.update(o for o in node.output if o)
    if index.output_name not in computed:
        raise ModelImportError(
            f"the logits '{index.output_name}' do not depend on '{cut}' (cut before the logits)"
        )
    chain: list[tuple[int, int]] = []
    tensor = cut
    while tensor != index.output_name:
        users = index.consumers.get(tensor, ())
        if len(users) != 1:
            where = ", ".join(describe_node(index.nodes[u], u) for u in users) or "nothing"
            raise ModelImportError(
                f"tensor '{tensor}' after the cut feeds {where}; the patched head must be a "
                "single chain (residual and other branches are patched in the prefix: cut after "
                "the last join)"
            )
        node_index = users[0]
        node = index.nodes[node_index]
        label = describe_node(node, node_index)
        dynamic = [i for i, name in enumerate(node.input) if name in computed]
        if len(dynamic) != 1:
            raise ModelImportError(
                f"{label} joins {len(dynamic)} computed tensors (a residual or branch); the "
                "patched head must be a single chain: cut after it"
            )
        if node.domain not in ("", "ai.onnx"):
            raise ModelImportError(
                f"unsupported op {node.domain}.{node.op_type} ({label}); cut after it"
            )
        if node.op_type not in ACTIVATIONS and node.op_type not in AFFINE_OPS:
            kind = _KINDS.get(node.op_type, "unsupported op")
            raise ModelImportError(
                f"{kind} {node.op_type} ({label}) after the cut '{cut}'; the patched part may "
                "only use affine ops and Relu/LeakyRelu/PRelu: cut after it"
            )
        outside = [
            name
            for i, name in enumerate(node.input)
            if name and i != dynamic[0] and name not in index.constants
        ]
        if outside:
            raise ModelImportError(
                f"{label} also reads '{outside[0]}', computed before the cut '{cut}' (a skip "
                "connection around it); cut after the join"
            )
        if node.op_type in ACTIVATIONS and dynamic[0] != 0:
            raise ModelImportError(f"{label}: the computed tensor must be the data input")
        extra = [o for o in node.output[1:] if o and (o in index.consumers or o in index.outputs)]
        if not node.output or extra:
            raise ModelImportError(f"{label} has {len(node.output)} used outputs; expected one")
        chain.append((node_index, dynamic[0]))
        tensor = node.output[0]
    return chain


_KINDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "Sigmoid",
            "Tanh",
            "Elu",
            "Selu",
            "Celu",
            "Gelu",
            "Softplus",
            "Softsign",
            "HardSigmoid",
            "HardSwish",
            "Mish",
            "ThresholdedRelu",
            "Exp",
            "Log",
        ),
        "non-piecewise-linear activation",
    ),
    "Clip": "two-breakpoint activation (not yet patchable)",
    "MaxPool": "max pooling (piecewise linear, but its regions are not sign patterns; prefix only)",
    "GlobalMaxPool": "max pooling (prefix only)",
    "Softmax": "normalisation inside the network",
    "LogSoftmax": "normalisation inside the network",
}


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
