"""The tree gate, read and rebuilt by the verifier (docs/FORMATS.md, "Tree gate").

The routed gate with its router as one ``ai.onnx.ml.TreeEnsembleRegressor`` over ``z``. The tree
is data in the node's attributes, so the verifier parses it, checks it as it checks the routed
gate's tables, and re-encodes exactly what it parsed into the canonical node (a node that carries
anything else, an extra attribute, another aggregate, a base value, differs byte for byte):

* shape: one tree, ``M = 2P - 1`` nodes listed ``0..M-1``; a branch tests ``z_k >= 0``
  (``BRANCH_GTE``, threshold 0, NaN to the false side) for a hidden neuron ``k`` and has both
  children after itself (so the tree is acyclic and its depth at most ``M``); every node but the
  root has exactly one parent; the ``P`` leaves carry the weights ``0..P-1``, each once, as the
  patch they route to;
* routing: every stored pattern, walked down the tree, reaches the leaf of its own patch, hence
  every input of region ``S_u`` is routed to ``u`` (exactness). Locality needs nothing from the
  tree: the routed candidate's gate is its activation gate, whatever the route.

Independent of :mod:`prune` (only the format is shared). Fail-closed: anything unexpected is a
failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._framework import CheckUnavailable
from audit.verify._graph import PATCH_PREFIX
from audit.verify._routed import (
    check_constants,
    confirm,
    patch_tables,
    read_patterns,
    sign_table,
)

if TYPE_CHECKING:
    from audit.verify._canonical import CanonicalGraph, PatchSpec

__all__ = ["ML_DOMAIN", "TREE", "TreeRouting", "read_tree_routing", "tree_gate"]

TREE = "tree"
ML_DOMAIN = "ai.onnx.ml"
TREE_NODE = PATCH_PREFIX + "route/tree"
_MAX_PATCHES = (1 << 24) - 1  # leaf weights are float32 patch indices: exact below 2^24
I64 = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class TreeRouting:
    """The parsed tree: per node ``feature``, ``true``, ``false`` and ``patch`` (-1 at branches),
    the stored ``patterns [P, H]`` and the ``depth`` (levels from the root to the deepest
    leaf)."""

    patterns: NDArray[np.bool_]
    feature: I64
    true: I64
    false: I64
    patch: I64
    depth: int

    def walk(self, signs: NDArray[np.bool_]) -> I64:
        """The patch reached by each row of ``signs [N, H]`` (True = active)."""
        node = np.zeros(len(signs), dtype=np.int64)
        rows = np.arange(len(signs))
        for _ in range(self.depth):
            inner = self.patch[node] < 0
            go = signs[rows, self.feature[node]]
            node = np.where(inner, np.where(go, self.true[node], self.false[node]), node)
        return np.asarray(self.patch[node], dtype=np.int64)

    def route(self, z: NDArray[np.floating[Any]]) -> I64:
        """The candidate patch of each row of ``z [N, H]``, as onnxruntime computes it."""
        return self.walk(z >= 0)

    def misrouted(self) -> I64:
        reached = self.walk(self.patterns)
        return np.flatnonzero(reached != np.arange(len(self.patterns))).astype(np.int64)

    def attributes(self) -> dict[str, Any]:
        """The canonical ``TreeEnsembleRegressor`` attributes of this tree (FORMATS.md)."""
        leaves = np.flatnonzero(self.patch >= 0)
        count = len(self.feature)
        return {
            "aggregate_function": "SUM",
            "n_targets": 1,
            "nodes_falsenodeids": self.false.tolist(),
            "nodes_featureids": self.feature.tolist(),
            "nodes_missing_value_tracks_true": [0] * count,
            "nodes_modes": ["LEAF" if p >= 0 else "BRANCH_GTE" for p in self.patch.tolist()],
            "nodes_nodeids": list(range(count)),
            "nodes_treeids": [0] * count,
            "nodes_truenodeids": self.true.tolist(),
            "nodes_values": [0.0] * count,
            "post_transform": "NONE",
            "target_ids": [0] * len(leaves),
            "target_nodeids": leaves.tolist(),
            "target_treeids": [0] * len(leaves),
            "target_weights": [float(self.patch[m]) for m in leaves],
        }


def _tree_node(patched: Any) -> Any:
    found = [n for n in patched.graph.node if n.name == TREE_NODE]
    if len(found) != 1:
        raise CheckUnavailable(f"tree gate: expected one node {TREE_NODE!r}, found {len(found)}")
    node = found[0]
    if node.op_type != "TreeEnsembleRegressor" or node.domain != ML_DOMAIN:
        raise CheckUnavailable(f"tree gate: {TREE_NODE!r} is not {ML_DOMAIN}.TreeEnsembleRegressor")
    return node


def _ints(attrs: dict[str, Any], name: str, length: int) -> I64:
    value = attrs.get(name)
    if not isinstance(value, list) or len(value) != length:
        raise CheckUnavailable(f"tree gate: attribute {name} is missing or not {length} long")
    try:
        array = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckUnavailable(f"tree gate: attribute {name} is not a list of integers") from exc
    return array


def read_tree_routing(patched: Any, *, patches: int, hidden: int) -> TreeRouting:
    """The tree of ``patched``'s router, shape-checked, with the routing check: every stored
    pattern must route to its own patch."""
    from onnx import helper

    if not 1 <= patches <= _MAX_PATCHES:
        raise CheckUnavailable(f"tree gate: {patches} patches (at most {_MAX_PATCHES})")
    found = patch_tables(patched)
    patterns = read_patterns(found, patches=patches, hidden=hidden)
    check_constants(found, {})
    node = _tree_node(patched)
    try:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    except Exception as exc:  # an attribute of an unknown type
        raise CheckUnavailable("tree gate: the router's attributes cannot be read") from exc
    count = 2 * patches - 1
    ids = _ints(attrs, "nodes_nodeids", count)
    trees = _ints(attrs, "nodes_treeids", count)
    feature = _ints(attrs, "nodes_featureids", count)
    true = _ints(attrs, "nodes_truenodeids", count)
    false = _ints(attrs, "nodes_falsenodeids", count)
    modes = attrs.get("nodes_modes")
    if not isinstance(modes, list) or len(modes) != count:
        raise CheckUnavailable(f"tree gate: the router must have exactly 2P - 1 = {count} nodes")
    if not (ids == np.arange(count)).all() or trees.any():
        raise CheckUnavailable("tree gate: nodes must be one tree listed 0..M-1")
    leaf = np.asarray([m == b"LEAF" for m in modes])
    branch = np.asarray([m == b"BRANCH_GTE" for m in modes])
    if not (leaf | branch).all():
        raise CheckUnavailable("tree gate: a node is neither LEAF nor BRANCH_GTE")
    own = np.arange(count)
    if (feature[branch] < 0).any() or (feature[branch] >= hidden).any():
        raise CheckUnavailable("tree gate: a branch tests no hidden neuron")
    for side in (true, false):
        if (side[branch] <= own[branch]).any() or (side[branch] >= count).any():
            raise CheckUnavailable("tree gate: a branch's child is not a later node")
    if feature[leaf].any() or true[leaf].any() or false[leaf].any():
        raise CheckUnavailable("tree gate: a leaf names a neuron or a child")
    parents = np.bincount(np.concatenate([true[branch], false[branch]]), minlength=count)
    if parents[0] != 0 or (parents[1:] != 1).any():
        raise CheckUnavailable("tree gate: every node but the root must have exactly one parent")
    leaves = np.flatnonzero(leaf)
    if not (
        (_ints(attrs, "target_nodeids", len(leaves)) == leaves).all()
        and not _ints(attrs, "target_ids", len(leaves)).any()
        and not _ints(attrs, "target_treeids", len(leaves)).any()
    ):
        raise CheckUnavailable("tree gate: the targets must be the leaves, in order, of tree 0")
    weights = np.asarray(attrs.get("target_weights", []), dtype=np.float64)
    if weights.shape != (len(leaves),) or not np.array_equal(
        np.sort(weights), np.arange(patches, dtype=np.float64)
    ):
        raise CheckUnavailable("tree gate: the leaves must carry the patches 0..P-1, each once")
    patch = np.full(count, -1, dtype=np.int64)
    patch[leaves] = weights.astype(np.int64)
    depth = np.zeros(count, dtype=np.int64)
    for m in np.flatnonzero(branch):  # children come later: one pass in node order
        depth[true[m]] = depth[false[m]] = depth[m] + 1
    routing = TreeRouting(
        patterns=patterns,
        feature=np.where(branch, feature, 0),
        true=np.where(branch, true, 0),
        false=np.where(branch, false, 0),
        patch=patch,
        depth=max(int(depth.max()), 1),
    )
    wrong = routing.misrouted()
    if len(wrong):
        raise CheckUnavailable(
            f"tree gate: the stored pattern of patch {int(wrong[0])} routes to patch "
            f"{int(routing.walk(routing.patterns[wrong[:1]])[0])} "
            f"({len(wrong)} patches misrouted): its region would not get its patch"
        )
    return routing


def tree_gate(graph: CanonicalGraph, spec: PatchSpec, x: str, z: str) -> str:
    """Canonical-graph registry entry (:data:`audit.verify._canonical.GATE_FORMS`): the tree
    router, the sign table of all patterns unpacked on constants, the routed pattern gathered
    and confirmed; returns ``g [N, 1]``."""
    from onnx import TensorProto

    routing = spec.routing
    if not isinstance(routing, TreeRouting):
        raise CheckUnavailable("tree gate: no checked router")
    p = PATCH_PREFIX
    packed_width = (spec.hidden + 7) // 8
    graph.param("route/patterns", (spec.patches, packed_width), TensorProto.UINT8)
    graph.const("route/signs", sign_table())
    axes1 = graph.const("route/axes1", np.asarray([1], dtype=np.int64))
    value = graph.node(
        "TreeEnsembleRegressor", [z], name="route/tree", domain=ML_DOMAIN, **routing.attributes()
    )
    index = graph.node("Cast", [value], name="route/index", to=TensorProto.INT64)
    patch = graph.node("Squeeze", [index, axes1], name="route/patch")
    byte = graph.node("Cast", [p + "route/patterns"], name="route/bytes", to=TensorProto.INT32)
    unpacked = graph.node("Gather", [p + "route/signs", byte], name="route/signs8", axis=0)
    flat = 8 * packed_width
    shape = graph.const("route/flat", np.asarray([spec.patches, flat], np.int64))
    table = graph.node(
        "Reshape",
        [unpacked, shape],
        name="route/table" if flat == spec.hidden else "route/table_flat",
    )
    if flat != spec.hidden:
        h0 = graph.const("route/h0", np.asarray([0], np.int64))
        h1 = graph.const("route/h1", np.asarray([spec.hidden], np.int64))
        table = graph.node("Slice", [table, h0, h1, axes1], name="route/table")
    sign = graph.node("Gather", [table, patch], name="route/sign", axis=0)
    return confirm(graph, z, sign, axes1)
