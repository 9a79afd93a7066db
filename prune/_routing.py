"""The routing tree of the ``routed`` gate (docs/FORMATS.md, "Routed gate").

A binary decision tree over the sign bits of the hidden pre-activations that sends every input to
at most one candidate patch. Built from the patches' stored patterns only:

* an internal node tests one neuron ``k``: child 0 when ``z_k < 0``, child 1 when ``z_k >= 0``
  (ties count as active, as in the patterns);
* a leaf holds one patch and loops to itself on both bits, so every input sits on a leaf after
  ``depth`` levels whatever the leaf's depth;
* nodes are numbered in breadth-first order from the root (node 0); a node's split is the neuron
  that divides its patches most evenly (the smallest index among ties), so the tree is a
  function of the patterns alone and its depth stays near ``log2 P`` for diverse patterns.

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

I64 = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class RoutingTree:
    """``split [M]`` (neuron tested; 0 at leaves), ``child [M, 2]`` (leaves point to
    themselves), ``leaf [M]`` (patch at a leaf; 0 at internal nodes), ``depth >= 1``."""

    split: I64
    child: I64
    leaf: I64
    depth: int

    def route(self, bits: NDArray[np.bool_]) -> I64:
        """Patch index for each row of ``bits [N, H]`` (True = neuron active, ``z >= 0``)."""
        node = np.zeros(len(bits), dtype=np.int64)
        rows = np.arange(len(bits))
        for _ in range(self.depth):
            node = self.child[node, bits[rows, self.split[node]].astype(np.int64)]
        return np.asarray(self.leaf[node], dtype=np.int64)


def build_tree(active: NDArray[np.bool_]) -> RoutingTree:
    """The canonical routing tree of the patterns ``active [P, H]`` (see the module docstring).
    Raises :class:`PatchError` when two patches share a pattern."""
    n_patches = active.shape[0]
    if n_patches == 0:
        raise PatchError("no patches to route")
    act = np.ascontiguousarray(active, dtype=bool)
    split: list[int] = []
    child: list[list[int]] = []
    leaf: list[int] = []
    depth_of: list[int] = []
    members: deque[tuple[int, NDArray[np.int64], int]] = deque()

    def new_node(ids: NDArray[np.int64], depth: int) -> int:
        node = len(split)
        split.append(0)
        child.append([node, node])
        leaf.append(0)
        depth_of.append(depth)
        members.append((node, ids, depth))
        return node

    new_node(np.arange(n_patches, dtype=np.int64), 0)
    while members:
        node, ids, depth = members.popleft()
        if len(ids) == 1:
            leaf[node] = int(ids[0])
            if node == 0:  # a single patch: one test that leads to the leaf either way
                only = new_node(ids, 1)
                child[0] = [only, only]
            continue
        ones = act[ids].sum(axis=0)
        balance = np.minimum(ones, len(ids) - ones)
        k = int(np.argmax(balance))
        if balance[k] == 0:
            raise PatchError(
                f"patches {int(ids[0])} and {int(ids[1])} have the same activation pattern: "
                "merge them into one patch before routing"
            )
        split[node] = k
        on = act[ids, k]
        child[node] = [new_node(ids[~on], depth + 1), new_node(ids[on], depth + 1)]
    return RoutingTree(
        split=np.asarray(split, dtype=np.int64),
        child=np.asarray(child, dtype=np.int64).reshape(-1, 2),
        leaf=np.asarray(leaf, dtype=np.int64),
        depth=max(depth_of),
    )


def pack_patterns(active: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """``[P, ceil(H/8)]`` bytes; neuron ``k`` is bit ``k % 8`` (least significant first) of
    byte ``k // 8``; padding bits are 0."""
    return np.packbits(np.asarray(active, dtype=bool), axis=1, bitorder="little")


def unpack_patterns(packed: NDArray[np.uint8], hidden: int) -> NDArray[np.bool_]:
    bits = np.unpackbits(packed, axis=1, count=hidden, bitorder="little")
    return np.asarray(bits, dtype=bool)
