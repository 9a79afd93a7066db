"""The routed gate, read and rebuilt by the verifier (docs/FORMATS.md, "Routed gate").

Independent of :mod:`prune` (only the format is shared): this module reads the routing tables,
checks the routing itself and rebuilds the canonical patch subgraph node for node.

Why node-for-node equality instead of the op rules of :mod:`audit.verify._graph`: routing is a
comparison (``z_k >= 0``) followed by table look-ups, which the piecewise-linear rules exclude
because in a free-form graph they could hide a trigger. Here the graph is fixed by the
parameters, so the only freedom left to the owner is in the tables, and those are checked:

* every stored pattern, walked down the tree, reaches the leaf of its own patch, hence every
  input of region ``S_u`` is routed to ``u`` and ``g_u = 1`` there (exactness);
* whatever the tree, the gate of the routed candidate is the activation gate of that candidate,
  so the patched model differs from the original only inside the activation-gate bands of the
  stored patterns: locality needs nothing from the tree.

Fail-closed: any table of the wrong dtype, shape or range, a cycle, a padding bit set, a
pattern that routes elsewhere, or a single node that differs from the rebuild is a failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._framework import CheckUnavailable
from audit.verify._graph import PATCH_OUTPUT, PATCH_PREFIX, Head

__all__ = ["ROUTED", "Routing", "read_routing", "routed_form_problems"]

ROUTED = "routed"
I64 = NDArray[np.int64]
# ONNX TensorProto data types
_FLOAT, _UINT8, _INT32 = 1, 2, 6
_MAX_WIDTH = 16  # neurons per node; 2^16 children per node is already far past useful
_TABLES = {
    "route/patterns": _UINT8,
    "route/split": _INT32,
    "route/child": _INT32,
    "route/leaf": _INT32,
    "route/bits": _FLOAT,
    "route/zero": _FLOAT,
    "gate/one": _FLOAT,
}


def bit_table() -> NDArray[np.float32]:
    values = np.arange(256, dtype=np.uint8)[:, None]
    return np.unpackbits(values, axis=1, bitorder="little").astype(np.float32)


@dataclass(frozen=True, eq=False)
class Routing:
    """The routed gate's tables: ``patterns [P, H]`` (True = active, ``z >= 0``),
    ``split [M, T]``, ``child [M, 2^T]``, ``leaf [M]``, and the tree's ``depth`` (levels in the
    graph)."""

    patterns: NDArray[np.bool_]
    split: I64
    child: I64
    leaf: I64
    depth: int

    @property
    def width(self) -> int:
        return int(self.split.shape[1])

    def walk(self, signs: NDArray[np.bool_]) -> I64:
        """The patch reached by each row of ``signs [N, H]`` (True = active)."""
        node = np.zeros(len(signs), dtype=np.int64)
        rows = np.arange(len(signs))[:, None]
        weights = 1 << np.arange(self.width, dtype=np.int64)
        for _ in range(self.depth):
            node = self.child[node, signs[rows, self.split[node]].astype(np.int64) @ weights]
        return np.asarray(self.leaf[node], dtype=np.int64)

    def route(self, z: NDArray[np.floating[Any]]) -> I64:
        """The candidate patch of each row of ``z [N, H]``, as the graph computes it."""
        return self.walk(z >= 0)

    def misrouted(self) -> I64:
        """Patches whose own stored pattern does not route to them (must be empty)."""
        reached = self.walk(self.patterns)
        return np.flatnonzero(reached != np.arange(len(self.patterns))).astype(np.int64)


def _tensor(found: dict[str, Any], name: str) -> NDArray[Any]:
    from onnx import numpy_helper

    tensor = found.get(name)
    if tensor is None:
        raise CheckUnavailable(f"routed gate: patch parameter {name} missing")
    if tensor.data_type != _TABLES[name]:
        raise CheckUnavailable(f"routed gate: patch parameter {name} has the wrong data type")
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as exc:  # a corrupt tensor
        raise CheckUnavailable(f"routed gate: patch parameter {name} cannot be read") from exc


def _depth(child: I64) -> int:
    """Levels until every node reachable from the root is a leaf (loops to itself on both
    bits); at least 1. A tree whose reachable part never settles is refused."""
    reach = np.zeros(1, dtype=np.int64)
    for depth in range(len(child) + 1):
        if (child[reach] == reach[:, None]).all():
            return max(depth, 1)
        reach = np.unique(child[reach])
    raise CheckUnavailable("routed gate: the routing tree has a cycle")


def read_routing(patched: Any, *, patches: int, hidden: int) -> Routing:
    """The routing tables of ``patched``, range-checked, with the routing check: every stored
    pattern must route to its own patch."""
    found = {
        t.name[len(PATCH_PREFIX) :]: t
        for t in patched.graph.initializer
        if t.name[len(PATCH_PREFIX) :] in _TABLES and t.name.startswith(PATCH_PREFIX)
    }
    if hidden < 1:
        raise CheckUnavailable("routed gate: the head has no hidden neurons to route on")
    packed = _tensor(found, "route/patterns")
    width = (hidden + 7) // 8
    if packed.shape != (patches, width):
        raise CheckUnavailable(
            f"routed gate: patterns have shape {packed.shape}, expected ({patches}, {width})"
        )
    bits = np.unpackbits(packed, axis=1, bitorder="little")
    if bits[:, hidden:].any():
        raise CheckUnavailable("routed gate: a padding bit of a stored pattern is set")
    split, child, leaf = (_tensor(found, f"route/{k}") for k in ("split", "child", "leaf"))
    if split.ndim != 2 or not 1 <= split.shape[1] <= _MAX_WIDTH:
        raise CheckUnavailable(f"routed gate: split has shape {split.shape}, expected [M, T]")
    nodes, width = split.shape
    if child.shape != (nodes << width,) or leaf.shape != (nodes,):
        raise CheckUnavailable(
            "routed gate: split, child and leaf tables do not fit [M, T], [M * 2^T], [M]"
        )
    if nodes < 2 or (split < 0).any() or (split >= hidden).any():
        raise CheckUnavailable("routed gate: a split names no hidden neuron (or no tree)")
    if (child < 0).any() or (child >= nodes).any() or (leaf < 0).any() or (leaf >= patches).any():
        raise CheckUnavailable("routed gate: a child or leaf index is out of range")
    for name, want in (
        ("route/bits", bit_table()),
        ("route/zero", np.float32(0.0)),
        ("gate/one", np.float32(1.0)),
    ):
        got = _tensor(found, name)
        if got.shape != np.shape(want) or not np.array_equal(got, want):
            raise CheckUnavailable(f"routed gate: constant {name} is not the canonical value")
    child2 = child.reshape(nodes, 1 << width).astype(np.int64)
    routing = Routing(
        patterns=bits[:, :hidden].astype(bool),
        split=split.astype(np.int64),
        child=child2,
        leaf=leaf.astype(np.int64),
        depth=_depth(child2),
    )
    wrong = routing.misrouted()
    if len(wrong):
        raise CheckUnavailable(
            f"routed gate: the stored pattern of patch {int(wrong[0])} routes to patch "
            f"{int(routing.walk(routing.patterns[wrong[:1]])[0])} "
            f"({len(wrong)} patches misrouted): its region would not get its patch"
        )
    return routing


class _Rebuild:
    """Collects nodes the way the owner's exporter names them (docs/FORMATS.md)."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []

    def node(self, op: str, inputs: Sequence[str], *, name: str, **attrs: Any) -> str:
        from onnx import helper

        out = name if name == PATCH_OUTPUT else PATCH_PREFIX + name
        node_name = PATCH_PREFIX + ("output" if name == PATCH_OUTPUT else name)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=node_name, **attrs))
        return out

    def ints(self, name: str, values: Any, dtype: type = np.int64) -> str:
        from onnx import helper, numpy_helper

        tensor = numpy_helper.from_array(np.asarray(values, dtype=dtype), name=PATCH_PREFIX + name)
        self.nodes.append(
            helper.make_node(
                "Constant", [], [PATCH_PREFIX + name], name=PATCH_PREFIX + name, value=tensor
            )
        )
        return PATCH_PREFIX + name


def canonical_nodes(
    head: Head, routing: Routing, *, linear: bool, affine: bool, classes: int
) -> list[Any]:
    """The patch subgraph of a routed patch, as the format defines it, from the parameters."""
    from onnx import TensorProto

    p, sink = PATCH_PREFIX, _Rebuild()
    hidden, i32 = routing.patterns.shape[1], TensorProto.INT32
    x = sink.node("Flatten", [head.cut], name="x", axis=1)
    flat_z = [sink.node("Flatten", [h], name=f"z{i}", axis=1) for i, h in enumerate(head.hidden)]
    z = sink.node("Concat", flat_z, name="z", axis=1)
    ge = sink.node("GreaterOrEqual", [z, p + "route/zero"], name="route/ge")
    signs = sink.node("Cast", [ge], name="route/signs", to=i32)
    weights = sink.ints("route/weights", 1 << np.arange(routing.width), np.int32)
    codes = sink.ints("route/codes", 1 << routing.width, np.int32)
    s0, s1 = sink.ints("route/s0", [0]), sink.ints("route/s1", [1])
    row = sink.node("Slice", [p + "route/split", s0, s1], name="route/root_row")
    root = sink.node("Squeeze", [row, sink.ints("route/axes0", [0])], name="route/root")
    bits = sink.node("Gather", [signs, root], name="route/b0", axis=1)
    code = sink.node("MatMul", [bits, weights], name="route/code0")
    node = sink.node("Gather", [p + "route/child", code], name="route/node1", axis=0)
    for level in range(1, routing.depth):
        k = sink.node("Gather", [p + "route/split", node], name=f"route/k{level}", axis=0)
        bits = sink.node("GatherElements", [signs, k], name=f"route/b{level}", axis=1)
        code = sink.node("MatMul", [bits, weights], name=f"route/code{level}")
        base = sink.node("Mul", [node, codes], name=f"route/base{level}")
        index = sink.node("Add", [base, code], name=f"route/index{level}")
        node = sink.node(
            "Gather", [p + "route/child", index], name=f"route/node{level + 1}", axis=0
        )
    patch = sink.node("Gather", [p + "route/leaf", node], name="route/patch", axis=0)
    packed = sink.node("Gather", [p + "route/patterns", patch], name="route/packed", axis=0)
    byte = sink.node("Cast", [packed], name="route/bytes", to=i32)
    unpacked = sink.node("Gather", [p + "route/bits", byte], name="route/bits8", axis=0)
    width = 8 * ((hidden + 7) // 8)
    pattern = sink.node(
        "Reshape",
        [unpacked, sink.ints("route/flat", [0, width])],
        name="route/pattern" if width == hidden else "route/bits_flat",
    )
    axes1 = sink.ints("route/axes1", [1])
    if width != hidden:
        h0, h1 = sink.ints("route/h0", [0]), sink.ints("route/h1", [hidden])
        pattern = sink.node("Slice", [pattern, h0, h1, axes1], name="route/pattern")
    above = sink.node("Relu", [z], name="gate/above")
    pz = sink.node("Mul", [pattern, z], name="route/pz")
    terms = sink.node("Sub", [above, pz], name="gate/terms")
    violation = sink.node("ReduceSum", [terms, axes1], name="gate/violation", keepdims=1)
    scaled = sink.node("Mul", [violation, p + "n"], name="gate/scaled")
    one = p + "gate/one"
    g = sink.node("Relu", [sink.node("Sub", [one, scaled], name="gate/1-nV")], name="g")
    d_u = sink.node("Gather", [p + "d", patch], name="route/d", axis=0)
    if linear:
        h = sink.node("Mul", [g, d_u], name="h_sum")
    else:
        k_u = sink.node("Gather", [p + "K", patch], name="route/K", axis=0)
        shift = sink.node("Sub", [sink.node("Mul", [k_u, g], name="Kg"), k_u], name="Kg-K")
        if affine:
            c_u = sink.node("Gather", [p + "C", patch], name="route/C", axis=0)
            x3 = sink.node("Unsqueeze", [x, axes1], name="route/x3")
            xc3 = sink.node("MatMul", [x3, c_u], name="route/xC3")
            xc = sink.node("Reshape", [xc3, sink.ints("route/o", [0, classes])], name="xC")
            d_u = sink.node("Add", [xc, d_u], name="p")
        up = sink.node("Relu", [sink.node("Add", [d_u, shift], name="p+s")], name="h_up")
        neg_p = sink.node("Neg", [d_u], name="-p")
        down = sink.node("Relu", [sink.node("Add", [neg_p, shift], name="-p+s")], name="h_down")
        h = sink.node("Sub", [up, down], name="h_sum")
    sink.node("Add", [head.output, h], name=PATCH_OUTPUT)
    return sink.nodes


def routed_form_problems(
    patch_nodes: Sequence[Any],
    head: Head,
    routing: Routing,
    *,
    d: NDArray[np.float64],
    K: NDArray[np.float64],
    affine: bool,
) -> list[str]:
    """Differences between the added nodes and the canonical routed subgraph (empty when equal).
    ``linear`` (the one-Mul form) is decided as the format says: constant patches whose float32
    entries are all 0 or ``+-K_u``."""
    if not head.hidden:
        return ["routed gate: the head has no hidden neurons to route on"]
    linear = not affine and bool(np.all((d == 0) | (np.abs(d) == K.reshape(-1, 1))))
    want = canonical_nodes(head, routing, linear=linear, affine=affine, classes=d.shape[1])
    if len(want) != len(patch_nodes):
        return [
            f"routed gate: {len(patch_nodes)} patch nodes, the canonical form of these "
            f"parameters has {len(want)}"
        ]
    for got, expected in zip(patch_nodes, want, strict=True):
        if got.SerializeToString(deterministic=True) != expected.SerializeToString(
            deterministic=True
        ):
            return [
                f"routed gate: patch node {got.name[:50] or got.op_type!r} differs from the "
                f"canonical node {expected.name[:50]!r}"
            ]
    return []
