"""The routing tree of the ``routed`` gate (docs/FORMATS.md, "Routed gate").

A decision tree over the sign bits of the hidden pre-activations that sends every input to at
most one candidate patch. Built from the patches' stored patterns only:

* an internal node tests ``T`` neurons ``k_0..k_{T-1}`` (``T = 4`` by default) and goes to the
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

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prune.errors import PatchError

__all__ = ["RoutingTree", "build_tree", "pack_patterns", "unpack_patterns"]

I32 = NDArray[np.int32]
DEFAULT_WIDTH = 4  # neurons per node: 16-way nodes, depth ~log16 P (measured: docs/BENCHMARKS.md)


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


def _choose(act: NDArray[np.bool_], width: int) -> list[int]:
    """``width`` neurons that split the rows of ``act`` into groups as even as possible
    (greedy: each next neuron minimises the sum of squared group sizes; smallest index on
    ties). When no neuron splits any group further, the last choice is repeated."""
    groups = np.zeros(len(act), dtype=np.int64)
    chosen: list[int] = []
    a = act.astype(np.float64)
    for _ in range(width):
        onehot = np.zeros((int(groups.max()) + 1, len(act)))
        onehot[groups, np.arange(len(act))] = 1.0
        ones = onehot @ a  # [G, H]
        sizes = onehot.sum(axis=1, keepdims=True)
        cost = (ones**2 + (sizes - ones) ** 2).sum(axis=0)
        k = int(np.argmin(cost))
        if chosen and cost[k] >= float((sizes**2).sum()):
            k = chosen[-1]
        chosen.append(k)
        groups = groups * 2 + act[:, k]
        _, groups = np.unique(groups, return_inverse=True)
    return chosen


def build_tree(active: NDArray[np.bool_], *, width: int = DEFAULT_WIDTH) -> RoutingTree:
    """The canonical routing tree of the patterns ``active [P, H]`` (see the module docstring):
    each internal node tests ``width`` neurons and has ``2^width`` children. Raises
    :class:`PatchError` when two patches share a pattern."""
    n_patches = active.shape[0]
    if n_patches == 0:
        raise PatchError("no patches to route")
    act = np.ascontiguousarray(active, dtype=bool)
    codes = 1 << width
    split: list[list[int]] = []
    child: list[list[int]] = []
    leaf: list[int] = []
    depth_of: list[int] = []
    pending: deque[tuple[int, NDArray[np.int64], int]] = deque()

    def new_node(ids: NDArray[np.int64], depth: int) -> int:
        node = len(split)
        split.append([0] * width)
        child.append([node] * codes)
        leaf.append(0)
        depth_of.append(depth)
        pending.append((node, ids, depth))
        return node

    new_node(np.arange(n_patches, dtype=np.int64), 0)
    while pending:
        node, ids, depth = pending.popleft()
        if len(ids) == 1:
            leaf[node] = int(ids[0])
            if node == 0:  # a single patch: one level that leads to the leaf either way
                only = new_node(ids, 1)
                child[0] = [only] * codes
            continue
        neurons = _choose(act[ids], width)
        code = act[ids][:, neurons].astype(np.int64) @ (1 << np.arange(width))
        if len(np.unique(code)) == 1:
            raise PatchError(
                f"patches {int(ids[0])} and {int(ids[1])} have the same activation pattern: "
                "merge them into one patch before routing"
            )
        split[node] = neurons
        kids = {int(c): new_node(ids[code == c], depth + 1) for c in np.unique(code)}
        first = kids[min(kids)]  # codes no patch takes go to some patch; its check rejects them
        child[node] = [kids.get(c, first) for c in range(codes)]
    return RoutingTree(
        split=np.asarray(split, dtype=np.int32),
        child=np.asarray(child, dtype=np.int32),
        leaf=np.asarray(leaf, dtype=np.int32),
        depth=max(depth_of),
    )


def pack_patterns(active: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """``[P, ceil(H/8)]`` bytes; neuron ``k`` is bit ``k % 8`` (least significant first) of
    byte ``k // 8``; padding bits are 0."""
    return np.packbits(np.asarray(active, dtype=bool), axis=1, bitorder="little")


def unpack_patterns(packed: NDArray[np.uint8], hidden: int) -> NDArray[np.bool_]:
    bits = np.unpackbits(packed, axis=1, count=hidden, bitorder="little")
    return np.asarray(bits, dtype=bool)
