"""The routing tree of the ``routed`` gate (docs/FORMATS.md, "Routed gate").

A decision tree over the sign bits of the hidden pre-activations that sends every input to at
most one candidate patch. Built from the patches' stored patterns only:

* an internal node tests ``T`` neurons ``k_0..k_{T-1}`` (``T = 5`` by default) and goes to the
  child of code ``sum_t [z_{k_t} >= 0] 2^t`` (ties count as active, as in the patterns); codes
  that no patch below takes lead to some patch below, whose exact check then rejects the input;
* a leaf holds one patch and loops to itself on every code, so every input sits on a leaf after
  ``depth`` levels whatever the leaf's depth;
* nodes are numbered in breadth-first order from the root (node 0); a node's neurons split its
  patches as evenly as a greedy choice can, so the tree is a function of the patterns alone
  and its depth stays near ``log_{2^T} P`` for diverse patterns. Fewer, wider levels mean fewer
  onnxruntime nodes per input, which is what the serving cost is made of at batch 256.

Invariant (what the auditor re-checks): walking patch ``u``'s own pattern from the root for
``depth`` levels ends on the leaf of ``u``. Hence every input whose activation pattern *is* ``u``'s
(the region ``S_u``) is routed to ``u`` and to no other patch. Two patches with the same pattern
cannot be told apart and are refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prune.errors import PatchError

__all__ = [
    "BinaryTree",
    "RoutingTree",
    "build_binary_tree",
    "build_tree",
    "pack_patterns",
    "unpack_patterns",
]

I32 = NDArray[np.int32]
DEFAULT_WIDTH = 5  # neurons per node: 32-way nodes, depth ~log32 P (measured: docs/BENCHMARKS.md)


@dataclass(frozen=True, eq=False)
class RoutingTree:
    """``split [M, T]`` (the ``T`` neurons a node tests; 0 at leaves), ``child [M, 2^T]``
    (next node for each code ``sum_t bit_t 2^t``; a leaf points to itself on every code),
    ``leaf [M]`` (patch at a leaf; 0 at internal nodes), ``depth >= 1``."""

    split: I32
    child: I32
    leaf: I32
    depth: int

    @property
    def width(self) -> int:
        return int(self.split.shape[1])

    def route(self, bits: NDArray[np.bool_]) -> I32:
        """Patch index for each row of ``bits [N, H]`` (True = neuron active, ``z >= 0``)."""
        node = np.zeros(len(bits), dtype=np.int64)
        rows = np.arange(len(bits))[:, None]
        weights = 1 << np.arange(self.width)
        for _ in range(self.depth):
            code = bits[rows, self.split[node]].astype(np.int64) @ weights
            node = self.child[node, code].astype(np.int64)
        return np.asarray(self.leaf[node], dtype=np.int32)


def _choose_many(act: NDArray[np.bool_], members: list[NDArray[np.int64]], width: int) -> I32:
    """For each node (the rows ``members[i]`` of ``act``), ``width`` neurons that split its rows
    into groups as even as possible (greedy: each next neuron minimises the sum of squared
    group sizes; smallest index on ties; when no neuron splits any group further, the last
    choice is repeated). All nodes of a level at once: per step, the groups' column sums are
    one sparse one-hot product (exact: small integers in float64)."""
    from scipy import sparse

    lengths = np.asarray([len(m) for m in members], dtype=np.int64)
    n_nodes = len(members)
    node_of = np.repeat(np.arange(n_nodes, dtype=np.int64), lengths)
    bits = act[np.concatenate(members)]
    counts = bits.astype(np.float64)
    rows = np.arange(len(bits))
    sub = np.zeros(len(bits), dtype=np.int64)  # a row's group inside its node
    chosen = np.zeros((n_nodes, width), dtype=np.int64)
    for step in range(width):
        keys, group = np.unique(node_of << width | sub, return_inverse=True)
        onehot = sparse.csr_matrix(
            (np.ones(len(rows)), (group, rows)), shape=(len(keys), len(rows))
        )
        ones = np.asarray(onehot @ counts)  # [G, H]
        sizes = np.bincount(group, minlength=len(keys)).astype(np.float64)[:, None]
        of_node = sparse.csr_matrix(
            (np.ones(len(keys)), (keys >> width, np.arange(len(keys)))),
            shape=(n_nodes, len(keys)),
        )
        cost = np.asarray(of_node @ (ones**2 + (sizes - ones) ** 2))  # [nodes, H]
        k = cost.argmin(axis=1)
        if step:
            total = np.asarray(of_node @ sizes**2)[:, 0]
            stuck = cost[np.arange(n_nodes), k] >= total
            k = np.where(stuck, chosen[:, step - 1], k)
        chosen[:, step] = k
        sub = sub * 2 + bits[rows, k[node_of]]
    return np.asarray(chosen, dtype=np.int32)


def build_tree(active: NDArray[np.bool_], *, width: int = DEFAULT_WIDTH) -> RoutingTree:
    """The canonical routing tree of the patterns ``active [P, H]`` (see the module docstring):
    each internal node tests ``width`` neurons and has ``2^width`` children. Built level by
    level (breadth-first numbering). Raises :class:`PatchError` when two patches share a
    pattern."""
    n_patches = active.shape[0]
    if n_patches == 0:
        raise PatchError("no patches to route")
    act = np.ascontiguousarray(active, dtype=bool)
    codes = 1 << width
    weights = 1 << np.arange(width)
    split: list[list[int]] = []
    child: list[list[int]] = []
    leaf: list[int] = []
    depth_of: list[int] = []

    def new_node(depth: int) -> int:
        node = len(split)
        split.append([0] * width)
        child.append([node] * codes)
        leaf.append(0)
        depth_of.append(depth)
        return node

    level: list[tuple[int, NDArray[np.int64]]] = [(new_node(0), np.arange(n_patches))]
    depth = 0
    while level:
        following: list[tuple[int, NDArray[np.int64]]] = []
        inner = [(node, ids) for node, ids in level if len(ids) > 1]
        picks = _choose_many(act, [ids for _, ids in inner], width) if inner else None
        at = 0
        for node, ids in level:
            if len(ids) == 1:
                leaf[node] = int(ids[0])
                if node == 0:  # a single patch: one level that leads to the leaf either way
                    only = new_node(1)
                    child[0] = [only] * codes
                    following.append((only, ids))
                continue
            assert picks is not None
            neurons = [int(k) for k in picks[at]]
            at += 1
            code = act[ids][:, neurons].astype(np.int64) @ weights
            present = np.unique(code)
            if len(present) == 1:
                raise PatchError(
                    f"patches {int(ids[0])} and {int(ids[1])} have the same activation pattern: "
                    "merge them into one patch before routing"
                )
            split[node] = neurons
            kids = {}
            for c in present:
                kids[int(c)] = new_node(depth + 1)
                following.append((kids[int(c)], ids[code == c]))
            first = kids[int(present[0])]  # codes no patch takes go to some patch (rejected)
            child[node] = [kids.get(c, first) for c in range(codes)]
        level = following
        depth += 1
    return RoutingTree(
        split=np.asarray(split, dtype=np.int32),
        child=np.asarray(child, dtype=np.int32),
        leaf=np.asarray(leaf, dtype=np.int32),
        depth=max(depth_of),
    )


@dataclass(frozen=True, eq=False)
class BinaryTree:
    """The ``tree`` gate's router (docs/FORMATS.md, "Tree gate"): ``M = 2P - 1`` nodes numbered
    breadth-first from the root (node 0). An internal node ``m`` tests one neuron
    ``feature[m]`` and goes to ``true[m]`` when ``z >= 0`` (ties count as active, as in the
    patterns), else to ``false[m]``; a leaf has ``patch[m] >= 0`` (``-1`` at internal nodes)
    and ``feature``, ``true``, ``false`` 0. Every split is proper (both sides hold patches),
    so there are exactly ``P`` leaves, one per patch."""

    feature: I32
    true: I32
    false: I32
    patch: I32
    depth: int

    def route(self, bits: NDArray[np.bool_]) -> I32:
        """Patch index for each row of ``bits [N, H]`` (True = neuron active, ``z >= 0``)."""
        node = np.zeros(len(bits), dtype=np.int64)
        rows = np.arange(len(bits))
        for _ in range(self.depth):
            inner = self.patch[node] < 0
            go = bits[rows, self.feature[node]]
            node = np.where(inner, np.where(go, self.true[node], self.false[node]), node)
        return np.asarray(self.patch[node], dtype=np.int32)


def build_binary_tree(active: NDArray[np.bool_]) -> BinaryTree:
    """The canonical binary routing tree of the patterns ``active [P, H]``: breadth first, each
    internal node tests the neuron that splits its patches most evenly (smallest
    ``|2 ones - n|`` among the neurons that split them at all; smallest index on ties), active
    patches to the ``true`` child, which is numbered first. A function of the patterns alone.
    Raises :class:`PatchError` when two patches share a pattern."""
    from collections import deque

    act = np.ascontiguousarray(active, dtype=bool)
    n_patches = act.shape[0]
    if n_patches == 0:
        raise PatchError("no patches to route")
    feature: list[int] = [0]
    true: list[int] = [0]
    false: list[int] = [0]
    patch: list[int] = [-1]
    depth = [0]
    queue: deque[tuple[int, NDArray[np.int64]]] = deque([(0, np.arange(n_patches))])
    while queue:
        node, ids = queue.popleft()
        if len(ids) == 1:
            patch[node] = int(ids[0])
            continue
        ones = act[ids].sum(axis=0, dtype=np.int64)
        cost = np.abs(2 * ones - len(ids))
        cost[(ones == 0) | (ones == len(ids))] = np.iinfo(np.int64).max
        k = int(cost.argmin())
        if ones[k] in (0, len(ids)):
            raise PatchError(
                f"patches {int(ids[0])} and {int(ids[1])} have the same activation pattern: "
                "merge them into one patch before routing"
            )
        feature[node] = k
        for side, members in ((true, ids[act[ids, k]]), (false, ids[~act[ids, k]])):
            child = len(feature)
            feature.append(0)
            true.append(0)
            false.append(0)
            patch.append(-1)
            depth.append(depth[node] + 1)
            side[node] = child
            queue.append((child, members))
    return BinaryTree(
        feature=np.asarray(feature, dtype=np.int32),
        true=np.asarray(true, dtype=np.int32),
        false=np.asarray(false, dtype=np.int32),
        patch=np.asarray(patch, dtype=np.int32),
        depth=max(max(depth), 1),
    )


def pack_patterns(active: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """``[P, ceil(H/8)]`` bytes; neuron ``k`` is bit ``k % 8`` (least significant first) of
    byte ``k // 8``; padding bits are 0."""
    return np.packbits(np.asarray(active, dtype=bool), axis=1, bitorder="little")


def unpack_patterns(packed: NDArray[np.uint8], hidden: int) -> NDArray[np.bool_]:
    bits = np.unpackbits(packed, axis=1, count=hidden, bitorder="little")
    return np.asarray(bits, dtype=bool)
