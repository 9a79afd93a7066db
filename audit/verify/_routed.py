"""The routed gate, read and rebuilt by the verifier (docs/FORMATS.md, "Routed gate").

Independent of :mod:`prune` (only the format is shared): this module reads the routing tables,
checks the routing itself, and is the routed entry of the canonical-graph registry
(:mod:`audit.verify._canonical`), which rebuilds the patch subgraph node for node.

Routing is a comparison (``z_k >= 0``) followed by table look-ups, which in a free-form graph
could hide a trigger. The graph is fixed by the parameters (canonical form), so the only
freedom left to the owner is in the tables, and those are checked:

* every stored pattern, walked down the tree, reaches the leaf of its own patch, hence every
  input of region ``S_u`` is routed to ``u`` and ``g_u = 1`` there (exactness);
* whatever the tree, the gate of the routed candidate is the activation gate of that candidate,
  so the patched model differs from the original only inside the activation-gate bands of the
  stored patterns: locality needs nothing from the tree.

Fail-closed: any table of the wrong dtype, shape or range, a cycle, a padding bit set, a
pattern that routes elsewhere, or a single node that differs from the rebuild is a failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._framework import CheckUnavailable
from audit.verify._graph import PATCH_PREFIX

if TYPE_CHECKING:
    from audit.verify._canonical import CanonicalGraph, PatchSpec

__all__ = ["ROUTED", "Routing", "read_routing", "routed_gate", "routed_patch_network"]

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
    "route/signs": _FLOAT,
    "route/zero": _FLOAT,
    "gate/one": _FLOAT,
}


def sign_table() -> NDArray[np.float32]:
    """``[256, 8]``: ``1 - 2 * bit_j(v)`` (FORMATS.md): -1 active, +1 inactive."""
    values = np.arange(256, dtype=np.uint8)[:, None]
    bits = np.unpackbits(values, axis=1, bitorder="little").astype(np.float32)
    return np.asarray(1.0 - 2.0 * bits, dtype=np.float32)


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


def patch_tables(patched: Any) -> dict[str, Any]:
    """The routed gates' ``prune/patch/`` tables of ``patched`` by short name (unread)."""
    return {
        t.name[len(PATCH_PREFIX) :]: t
        for t in patched.graph.initializer
        if t.name[len(PATCH_PREFIX) :] in _TABLES and t.name.startswith(PATCH_PREFIX)
    }


def read_patterns(found: dict[str, Any], *, patches: int, hidden: int) -> NDArray[np.bool_]:
    """The packed patterns ``[P, H]`` (True = active), shape- and padding-checked."""
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
    return np.asarray(bits[:, :hidden], dtype=bool)


def check_constants(found: dict[str, Any], extra: dict[str, Any]) -> None:
    """The sign table, ``gate/one`` and ``extra`` hold their canonical values."""
    wanted = {"route/signs": sign_table(), "gate/one": np.float32(1.0), **extra}
    for name, want in wanted.items():
        got = _tensor(found, name)
        if got.shape != np.shape(want) or not np.array_equal(got, want):
            raise CheckUnavailable(f"routed gate: constant {name} is not the canonical value")


def read_routing(patched: Any, *, patches: int, hidden: int) -> Routing:
    """The routing tables of ``patched``, range-checked, with the routing check: every stored
    pattern must route to its own patch."""
    found = patch_tables(patched)
    patterns = read_patterns(found, patches=patches, hidden=hidden)
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
    check_constants(found, {"route/zero": np.float32(0.0)})
    child2 = child.reshape(nodes, 1 << width).astype(np.int64)
    routing = Routing(
        patterns=patterns,
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


def routed_gate(graph: CanonicalGraph, spec: PatchSpec, x: str, z: str) -> str:
    """Canonical-graph registry entry (:data:`audit.verify._canonical.GATE_FORMS`): the routing
    tree walked on the sign bits, the routed patch's pattern gathered and confirmed; returns
    ``g [N, 1]`` (the tensor ``prune/patch/route/patch`` holds the routed patch)."""
    from onnx import TensorProto

    routing = spec.routing
    if not isinstance(routing, Routing):
        raise CheckUnavailable("routed gate: no checked routing tables")
    p, i32 = PATCH_PREFIX, TensorProto.INT32
    nodes, width = routing.split.shape
    packed_width = (spec.hidden + 7) // 8
    graph.param("route/patterns", (spec.patches, packed_width), TensorProto.UINT8)
    graph.param("route/split", (nodes, width), i32)
    graph.param("route/child", (nodes << width,), i32)
    graph.param("route/leaf", (nodes,), i32)
    graph.const("route/signs", sign_table())
    zero = graph.const("route/zero", np.asarray(0.0, dtype=np.float32))
    weights = graph.const("route/weights", (1 << np.arange(width)).astype(np.int32))
    codes = graph.const("route/codes", np.asarray(1 << width, dtype=np.int32))
    s0 = graph.const("route/s0", np.asarray([0], np.int64))
    s1 = graph.const("route/s1", np.asarray([1], np.int64))
    row = graph.node("Slice", [p + "route/split", s0, s1], name="route/root_row")
    axes0 = graph.const("route/axes0", np.asarray([0], np.int64))
    root = graph.node("Squeeze", [row, axes0], name="route/root")
    z_k = graph.node("Gather", [z, root], name="route/z0", axis=1)
    ge = graph.node("GreaterOrEqual", [z_k, zero], name="route/ge0")
    bits = graph.node("Cast", [ge], name="route/b0", to=i32)
    code = graph.node("MatMul", [bits, weights], name="route/code0")
    node = graph.node("Gather", [p + "route/child", code], name="route/node1", axis=0)
    for level in range(1, routing.depth):
        k = graph.node("Gather", [p + "route/split", node], name=f"route/k{level}", axis=0)
        z_k = graph.node("GatherElements", [z, k], name=f"route/z{level}", axis=1)
        ge = graph.node("GreaterOrEqual", [z_k, zero], name=f"route/ge{level}")
        bits = graph.node("Cast", [ge], name=f"route/b{level}", to=i32)
        code = graph.node("MatMul", [bits, weights], name=f"route/code{level}")
        base = graph.node("Mul", [node, codes], name=f"route/base{level}")
        index = graph.node("Add", [base, code], name=f"route/index{level}")
        node = graph.node(
            "Gather", [p + "route/child", index], name=f"route/node{level + 1}", axis=0
        )
    patch = graph.node("Gather", [p + "route/leaf", node], name="route/patch", axis=0)
    packed = graph.node("Gather", [p + "route/patterns", patch], name="route/packed", axis=0)
    byte = graph.node("Cast", [packed], name="route/bytes", to=i32)
    unpacked = graph.node("Gather", [p + "route/signs", byte], name="route/signs8", axis=0)
    flat = 8 * packed_width
    sign = graph.node(
        "Reshape",
        [unpacked, graph.const("route/flat", np.asarray([0, flat], np.int64))],
        name="route/sign" if flat == spec.hidden else "route/signs_flat",
    )
    axes1 = graph.const("route/axes1", np.asarray([1], dtype=np.int64))
    if flat != spec.hidden:
        h0 = graph.const("route/h0", np.asarray([0], np.int64))
        h1 = graph.const("route/h1", np.asarray([spec.hidden], np.int64))
        sign = graph.node("Slice", [sign, h0, h1, axes1], name="route/sign")
    return confirm(graph, z, sign, axes1)


def confirm(graph: CanonicalGraph, z: str, sign: str, axes1: str) -> str:
    """The routed candidate's gate ``g = ReLU(1 - n V)`` from its signs ``[N, H]``; shared by
    the ``routed`` and ``tree`` forms."""
    p = PATCH_PREFIX
    signed = graph.node("Mul", [z, sign], name="gate/signed")
    terms = graph.node("Relu", [signed], name="gate/terms")
    violation = graph.node("ReduceSum", [terms, axes1], name="gate/violation", keepdims=1)
    scaled = graph.node("Mul", [violation, p + "n"], name="gate/scaled")
    one = graph.const("gate/one", np.asarray(1.0, dtype=np.float32))
    return graph.node("Relu", [graph.node("Sub", [one, scaled], name="gate/1-nV")], name="g")


def routed_patch_network(graph: CanonicalGraph, spec: PatchSpec, x: str, g: str) -> str:
    """``h_r`` of the routed patch ``r`` (its rows of ``d``, ``K``, ``C`` gathered per input);
    the one-``Mul`` form ``g * d_r`` when the patch is linear in the gate."""
    p = PATCH_PREFIX
    patch = p + "route/patch"
    d_u = graph.node("Gather", [p + "d", patch], name="route/d", axis=0)
    if spec.linear:
        return graph.node("Mul", [g, d_u], name="h_sum")
    k_u = graph.node("Gather", [p + "K", patch], name="route/K", axis=0)
    shift = graph.node("Sub", [graph.node("Mul", [k_u, g], name="Kg"), k_u], name="Kg-K")
    if spec.affine:
        c_u = graph.node("Gather", [p + "C", patch], name="route/C", axis=0)
        x3 = graph.node("Unsqueeze", [x, p + "route/axes1"], name="route/x3")
        xc3 = graph.node("MatMul", [x3, c_u], name="route/xC3")
        shape = graph.const("route/o", np.asarray([0, spec.classes], np.int64))
        xc = graph.node("Reshape", [xc3, shape], name="xC")
        d_u = graph.node("Add", [xc, d_u], name="p")
    up = graph.node("Relu", [graph.node("Add", [d_u, shift], name="p+s")], name="h_up")
    neg_p = graph.node("Neg", [d_u], name="-p")
    down = graph.node("Relu", [graph.node("Add", [neg_p, shift], name="-p+s")], name="h_down")
    return graph.node("Sub", [up, down], name="h_sum")
