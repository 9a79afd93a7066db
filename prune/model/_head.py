"""The piecewise-linear head: the part of the graph from the cut tensor to the logits, as dense
affine layers with piecewise-linear activations between them.

Invariant (checked by the tests against onnxruntime): for every cut value ``x`` (flattened),
``z_1 = W_1 x + b_1``, ``z_{l+1} = W_{l+1} phi_l(z_l) + b_{l+1}``, and the last layer gives the
logits; ``z_l`` is the concatenation of the flattened values of the tensors named in ``hidden``
for layer ``l`` (docs/FORMATS.md, "Head layers"). The activations are ``phi(z) = z`` for
``z >= 0`` and ``slope * z`` below: Relu (slope 0), LeakyRelu (``alpha``), PRelu (its constant
slope, broadcast per unit), and slope 1 for a *carried* tensor. ``Clip(t, a, b)`` (Relu6,
Hardtanh) has two breakpoints and is rewritten exactly as ``a + relu(t - a) - relu(t - b)``: its
input gives two Relu units, ``t - a`` and ``t - b`` (the tensor listed twice in ``hidden``, with
the bound as the unit's *offset*: ``z = t - offset``); with no upper bound, ``max(t, a)`` is the
one unit ``t - a``. The region of a point is the sign pattern of all units, so a Clip unit's
three states (below ``a``, between, above ``b``) are its two signs.

The head may be a DAG (residual joins: Add/Sub/Sum/Concat of two computed tensors). Its layers
follow the *depth* of each tensor, the number of activations on the longest path from the cut:
hidden layer ``l`` holds the inputs of the activations whose output has depth ``l`` (breakpoint
units) and every tensor of depth below ``l`` that a node of depth ``l`` or more still reads
(carried units, slope 1: a skip connection crossing the layer). Carried units add sign rows to
the region (a finer region, on which the head is still affine), so the rows, the patterns and
the gates treat every unit alike."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError
from prune.model._graph import GraphIndex, describe_node
from prune.model._ops import AFFINE_OPS, JOIN_OPS, NodeCall

__all__ = [
    "ACTIVATIONS",
    "AffineLayer",
    "HeadPlan",
    "PLHead",
    "Unit",
    "check_cut",
    "dense_entries",
    "extract_head",
]

Array = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class AffineLayer:
    """``y = weight @ x + bias`` on flattened vectors; float64, ``weight`` is ``[out, in]``."""

    weight: Array
    bias: Array


@dataclass(frozen=True, eq=False)
class PLHead:
    """The head after ``cut``: ``len(layers)`` is the number of hidden layers plus one;
    ``hidden`` the unit tensors of all layers in order (a chain has one per layer; a DAG head
    may list several, and a tensor twice). ``slopes[l]`` is the negative-side slope of each unit
    of hidden layer ``l`` (``[H_l]``; empty means Relu, 0)."""

    cut: str
    cut_shape: tuple[int, ...]
    hidden: tuple[str, ...]
    output: str
    layers: tuple[AffineLayer, ...]
    slopes: tuple[Array, ...] = ()
    offsets: tuple[float, ...] = ()
    """Per ``hidden`` entry, the constant subtracted from the tensor's values to give its units
    (a Clip bound; 0 elsewhere; empty means all 0). Bounds are float32 values."""

    def offset(self, entry: int) -> float:
        """The offset of ``hidden[entry]``: ``z = value(hidden[entry]) - offset``."""
        return self.offsets[entry] if self.offsets else 0.0

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


ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Clip"})
"""Piecewise-linear activations: they end an affine segment. All have one breakpoint at 0
except Clip, whose input gives two Relu units (module docstring)."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)

MAX_DENSE_ENTRIES = 40_000_000
"""The default cut skips a candidate whose dense head would hold more float64 weights than this
(320 MB): a whole convolutional network as dense layers does not fit, and with residual blocks
in the head the import's identity-basis evaluation holds several times the head (measured: the
ResNet-20 benchmark's 134-million-weight two-block head peaked at 5 GB RSS to import), so the
default stays well below; a later cut fits, and ``--cut`` picks a deeper one explicitly."""


@dataclass(frozen=True)
class Unit:
    """One group of units of a hidden layer: the values of graph tensor ``tensor``, either the
    input of activation node ``activation`` (a breakpoint) or, when that is ``None``, a tensor
    carried across the layer (slope 1). For a Clip, ``bound`` says which of its two Relu units
    this is (``"lo"``: ``t - min``, ``"hi"``: ``t - max``)."""

    tensor: str
    activation: int | None
    bound: Literal["lo", "hi"] | None = None


@dataclass(frozen=True)
class HeadPlan:
    """The head's nodes (file order, only those the logits depend on), the depth of every
    tensor after the cut and the units of each hidden layer (module docstring)."""

    nodes: tuple[int, ...]
    depth: Mapping[str, int]
    layers: tuple[tuple[Unit, ...], ...]

    @property
    def activations(self) -> int:
        """How many activation nodes the head has (a Clip's two units count once)."""
        return len(self.breakpoint_nodes)

    @property
    def breakpoint_nodes(self) -> tuple[int, ...]:
        """The head's activation nodes (Relu, LeakyRelu, PRelu, Clip), in layer order."""
        nodes = [u.activation for layer in self.layers for u in layer if u.activation is not None]
        return tuple(dict.fromkeys(nodes))


def extract_head(index: GraphIndex, cut: str, *, require_activation: bool = True) -> PLHead:
    """Convert the graph after ``cut`` to a :class:`PLHead`, or raise naming the op and node."""
    plan = check_cut(index, cut, require_activation=require_activation)
    cut_shape = index.sample_shape(cut)
    d = int(np.prod(cut_shape))
    values: dict[str, Any] = {cut: _basis(d).reshape(d + 1, *cut_shape)}
    layers: list[AffineLayer] = []
    slopes: list[Array] = []
    offsets: list[float] = []
    for stage in range(len(plan.layers) + 1):
        _evaluate_stage(index, plan, stage, values)
        if stage == len(plan.layers):
            break
        units = plan.layers[stage]
        unit_offsets = [unit_offset(index, u) for u in units]
        offsets.extend(unit_offsets)
        parts = [
            np.asarray(values[u.tensor]).reshape(len(values[u.tensor]), -1) - off
            for u, off in zip(units, unit_offsets, strict=True)
        ]
        flat = np.concatenate(parts, axis=1)
        bias = flat[0].copy()
        layers.append(AffineLayer(weight=(flat[1:] - bias).T.copy(), bias=bias))
        unit_slopes = [
            _slope(index, u, tuple(np.asarray(values[u.tensor]).shape[1:])) for u in units
        ]
        slopes.append(np.concatenate(unit_slopes))
        values = _next_basis(index, plan, stage + 1, values, [p.shape[1] for p in parts])
    out = np.asarray(values[index.output_name])
    flat = out.reshape(len(out), -1)
    bias = flat[0].copy()
    layers.append(AffineLayer(weight=(flat[1:] - bias).T.copy(), bias=bias))
    _check_dims(layers)
    return PLHead(
        cut=cut,
        cut_shape=cut_shape,
        hidden=tuple(u.tensor for layer in plan.layers for u in layer),
        output=index.output_name,
        layers=tuple(layers),
        slopes=tuple(slopes),
        offsets=tuple(offsets) if any(offsets) else (),
    )


def _basis(d: int) -> Array:
    """The evaluation points ``0, e_1, ..., e_d``: an affine map's values there give its bias
    (row 0) and its weight columns (row ``i`` minus row 0), exactly up to float64 rounding."""
    return np.concatenate([np.zeros((1, d)), np.eye(d)])


def _next_basis(
    index: GraphIndex, plan: HeadPlan, layer: int, values: dict[str, Any], sizes: list[int]
) -> dict[str, Any]:
    """The values at the start of stage ``layer``, on the basis of ``phi(z_layer)``: each
    breakpoint unit's slice is its activation's output, each carried unit's slice the carried
    tensor itself; a Clip's output is ``min + relu(t - min) - relu(t - max)``, its lo slice plus
    its bound minus its hi slice."""
    units = plan.layers[layer - 1]
    width = sum(sizes)
    basis = _basis(width)
    out: dict[str, Any] = {}
    start = 0
    for unit, size in zip(units, sizes, strict=True):
        shape = tuple(np.asarray(values[unit.tensor]).shape[1:])
        piece = basis[:, start : start + size].reshape(width + 1, *shape)
        start += size
        if unit.activation is None:
            out[unit.tensor] = piece
        elif unit.bound == "lo":
            out[index.nodes[unit.activation].output[0]] = piece + unit_offset(index, unit)
        elif unit.bound == "hi":
            out[index.nodes[unit.activation].output[0]] = (
                out[index.nodes[unit.activation].output[0]] - piece
            )
        else:
            out[index.nodes[unit.activation].output[0]] = piece
    return out


def clip_bounds(index: GraphIndex, node_index: int) -> tuple[float, float | None]:
    """``(min, max)`` of Clip node ``node_index`` as float32 values (``max`` ``None`` when the
    Clip has no upper bound): its constant inputs 1 and 2 (the form of every opset the import
    accepts, 13 on). A bound of float32 magnitude or beyond counts as absent. Refused: no lower
    bound (``min(t, b)`` is not a Relu of ``t`` minus a constant), non-scalar bounds, and
    ``min > max`` (ONNX then outputs ``max`` everywhere)."""
    node = index.nodes[node_index]
    call = NodeCall(node=node, index=node_index, dynamic_input=0, constants=index.constants)
    bounds: list[float | None] = []
    for position, name in ((1, "min"), (2, "max")):
        const = call.const(position)
        if const is None:
            bounds.append(None)
            continue
        arr = np.asarray(const)
        if arr.size != 1 or arr.dtype.kind != "f":
            raise call.reject(f"the Clip {name} must be a float scalar, got {arr.dtype}{arr.shape}")
        value = float(np.float32(arr.reshape(())))
        if np.isnan(value):
            raise call.reject(f"the Clip {name} is NaN")
        bounds.append(None if not abs(value) < _FLOAT32_MAX else value)
    lo, hi = bounds
    if lo is None:
        raise call.reject(
            "a Clip without a finite lower bound (min(t, max)) is not supported; cut after it"
        )
    if hi is not None and lo > hi:
        raise call.reject(f"Clip min {lo} > max {hi} (a constant output); cut after it")
    return lo, hi


def unit_offset(index: GraphIndex, unit: Unit) -> float:
    """The constant subtracted from ``unit.tensor`` to give the unit (a Clip bound, else 0)."""
    if unit.bound is None or unit.activation is None:
        return 0.0
    lo, hi = clip_bounds(index, unit.activation)
    if unit.bound == "lo":
        return lo
    assert hi is not None
    return hi


def _evaluate_stage(index: GraphIndex, plan: HeadPlan, stage: int, values: dict[str, Any]) -> None:
    """Evaluate, in file order, every non-activation head node whose output has depth ``stage``
    on the stage's basis points (``values`` holds its inputs; outputs are added to it)."""
    for node_index in plan.nodes:
        node = index.nodes[node_index]
        out = node.output[0]
        if node.op_type in ACTIVATIONS or plan.depth[out] != stage:
            continue
        computed = [i for i, name in enumerate(node.input) if name in plan.depth]
        missing = [node.input[i] for i in computed if node.input[i] not in values]
        if missing:
            raise ModelImportError(f"internal: {missing[0]} not available at stage {stage}")
        if len(computed) == 1:
            call = NodeCall(
                node=node, index=node_index, dynamic_input=computed[0], constants=index.constants
            )
            values[out] = AFFINE_OPS[node.op_type](call, values[node.input[computed[0]]])
        else:
            call = NodeCall(
                node=node, index=node_index, dynamic_input=computed[0], constants=index.constants
            )
            inputs = {i: values[node.input[i]] for i in computed}
            values[out] = JOIN_OPS[node.op_type](call, inputs)


def check_cut(index: GraphIndex, cut: str, *, require_activation: bool = True) -> HeadPlan:
    """The head's plan after ``cut``, checked without evaluating anything: affine ops (joins of
    computed tensors by Add/Sub/Sum/Concat included) and activations only, and ``cut`` must
    separate the graph (no node after it reads a tensor computed before it), with at least one
    activation when ``require_activation`` (an affine head has a single region, the whole box,
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
    plan = _plan(index, cut)
    if require_activation and plan.activations == 0:
        raise ModelImportError(
            f"no Relu/LeakyRelu/PRelu/Clip after the cut '{cut}': the head is affine, so a patch "
            "would act on every input; cut earlier (`prune inspect MODEL` lists the cuts)"
        )
    return plan


def dense_entries(index: GraphIndex, cut: str, plan: HeadPlan) -> int:
    """How many float64 weights the dense head after ``cut`` holds (from inferred shapes)."""
    sizes = [int(np.prod(index.sample_shape(cut)))]
    for layer in plan.layers:
        sizes.append(sum(int(np.prod(index.sample_shape(u.tensor))) for u in layer))
    sizes.append(int(np.prod(index.sample_shape(index.output_name))))
    return sum(a * b for a, b in itertools.pairwise(sizes))


def _slope(index: GraphIndex, unit: Unit, shape: tuple[int, ...]) -> Array:
    """Negative-side slope of each unit of ``unit`` (values of per-sample shape ``shape``)."""
    size = int(np.prod(shape))
    if unit.activation is None:
        return np.ones(size)
    node = index.nodes[unit.activation]
    if node.op_type in ("Relu", "Clip"):
        return np.zeros(size)
    call = NodeCall(node=node, index=unit.activation, dynamic_input=0, constants=index.constants)
    if node.op_type == "LeakyRelu":
        return np.full(size, float(call.attr("alpha", 0.01)))
    slope = np.asarray(call.const(1), dtype=np.float64)
    try:
        return np.broadcast_to(slope, (1, *shape)).reshape(-1).copy()
    except ValueError as exc:
        raise call.reject(f"slope of shape {slope.shape} does not fit {shape}") from exc


def _plan(index: GraphIndex, cut: str) -> HeadPlan:
    """Nodes, depths and layer units of the head after ``cut`` (module docstring)."""
    tail = set(index.tail)
    computed = {cut}
    after: list[int] = []
    for i, node in enumerate(index.nodes):
        if i in tail or node.op_type == "Constant":
            continue
        if any(name in computed for name in node.input):
            after.append(i)
            computed.update(o for o in node.output if o)
    if index.output_name not in computed:
        raise ModelImportError(
            f"the logits '{index.output_name}' do not depend on '{cut}' (cut before the logits)"
        )
    needed = {index.output_name}
    nodes: list[int] = []
    for i in reversed(after):
        if any(o in needed for o in index.nodes[i].output):
            nodes.append(i)
            needed.update(n for n in index.nodes[i].input if n)
    nodes.reverse()
    depth: dict[str, int] = {cut: 0}
    readers: dict[str, list[int]] = {}
    for node_index in nodes:
        node = index.nodes[node_index]
        label = describe_node(node, node_index)
        _check_node(index, node, label, cut, computed)
        dynamic = [name for name in node.input if name in computed]
        for name in dynamic:
            readers.setdefault(name, []).append(node_index)
        if node.op_type in ACTIVATIONS:
            depth[node.output[0]] = depth[node.input[0]] + 1
        else:
            depth[node.output[0]] = max(depth[name] for name in dynamic)
    for name, users in readers.items():
        acts = [u for u in users if index.nodes[u].op_type in ACTIVATIONS]
        if len(acts) > 1:
            raise ModelImportError(
                f"tensor '{name}' after the cut feeds {len(acts)} activations "
                f"({', '.join(describe_node(index.nodes[u], u) for u in acts)}); cut after them"
            )
    order = [cut, *(index.nodes[i].output[0] for i in nodes)]
    layers: list[tuple[Unit, ...]] = []
    for layer in range(1, depth[index.output_name] + 1):
        units: list[Unit] = []
        for name in order:
            if depth[name] > layer - 1:
                continue
            users = readers.get(name, [])
            acts = [u for u in users if index.nodes[u].op_type in ACTIVATIONS]
            if acts and depth[name] == layer - 1:
                if index.nodes[acts[0]].op_type == "Clip":
                    _, hi = clip_bounds(index, acts[0])
                    units.append(Unit(tensor=name, activation=acts[0], bound="lo"))
                    if hi is not None:
                        units.append(Unit(tensor=name, activation=acts[0], bound="hi"))
                else:
                    units.append(Unit(tensor=name, activation=acts[0]))
            later = [
                u
                for u in users
                if index.nodes[u].op_type not in ACTIVATIONS
                and depth[index.nodes[u].output[0]] >= layer
            ]
            if later:
                units.append(Unit(tensor=name, activation=None))
        layers.append(tuple(units))
    return HeadPlan(nodes=tuple(nodes), depth=depth, layers=tuple(layers))


def _check_node(index: GraphIndex, node: Any, label: str, cut: str, computed: set[str]) -> None:
    """One head node: an op the head converts, reading only tensors after the cut and
    constants, with one used output."""
    if node.domain not in ("", "ai.onnx"):
        raise ModelImportError(
            f"unsupported op {node.domain}.{node.op_type} ({label}); cut after it"
        )
    dynamic = [i for i, name in enumerate(node.input) if name in computed]
    if node.op_type not in ACTIVATIONS and node.op_type not in AFFINE_OPS:
        kind = _KINDS.get(node.op_type, "unsupported op")
        raise ModelImportError(
            f"{kind} {node.op_type} ({label}) after the cut '{cut}'; the patched part may only "
            "use affine ops, residual joins and Relu/LeakyRelu/PRelu/Clip: cut after it"
        )
    outside = [
        name
        for i, name in enumerate(node.input)
        if name and i not in dynamic and name not in index.constants
    ]
    if outside:
        raise ModelImportError(
            f"{label} also reads '{outside[0]}', computed before the cut '{cut}' (a skip "
            "connection around it); cut before the branch or after the join"
        )
    if len(dynamic) > 1 and node.op_type not in JOIN_OPS:
        raise ModelImportError(
            f"{label} combines {len(dynamic)} computed tensors, which is not affine for "
            f"{node.op_type} (only Add/Sub/Sum/Concat joins are); cut after it"
        )
    if node.op_type in ACTIVATIONS and dynamic != [0]:
        raise ModelImportError(f"{label}: the computed tensor must be the data input")
    extra = [o for o in node.output[1:] if o and (o in index.consumers or o in index.outputs)]
    if not node.output or extra:
        raise ModelImportError(f"{label} has {len(node.output)} used outputs; expected one")


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
    "MaxPool": "max pooling (piecewise linear, but its regions are not sign patterns; prefix only)",
    "GlobalMaxPool": "max pooling (prefix only)",
    "Softmax": "normalisation inside the network",
    "LogSoftmax": "normalisation inside the network",
}


def _check_dims(layers: list[AffineLayer]) -> None:
    for i in range(1, len(layers)):
        if layers[i].weight.shape[1] != layers[i - 1].weight.shape[0]:
            raise ModelImportError("internal: head layer sizes do not chain")
