"""Consistent targets for regions that may touch.

Two patched regions that share a boundary point cannot both be certified with *different*
targets: the patched model is continuous, so at the shared point it would have to predict both.
Patches are ``delta * e_target`` (they only raise their target's logit), so a neighbour's partly
active gate can only help a region with the *same* target. We therefore give one target to every
group of regions that are close in activation-pattern space: regions whose sign patterns differ in
at most ``max_hamming`` neurons are linked (a facet-sharing neighbour differs in exactly one), and
each connected component gets one target, chosen by the policy on the component's summed logits
with every member's forbidden classes excluded.

Regions further apart can still meet at lower-dimensional faces; the auditor's region probes are
the check for that residual case, and the engine's ONNX re-check covers the forget points."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from prune.targets import choose_targets

__all__ = ["harmonised_targets", "pattern_components"]


def pattern_components(active: NDArray[np.bool_], *, max_hamming: int) -> NDArray[np.int64]:
    """Connected components of the graph linking patterns at Hamming distance <= ``max_hamming``
    (union-find over a blockwise distance matrix; memory ``O(block * P)``)."""
    n = len(active)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    bits = active.astype(np.float32)
    ones = bits.sum(axis=1)
    block = 512
    for start in range(0, n, block):
        chunk = bits[start : start + block]
        # Hamming(a, b) = |a| + |b| - 2 a.b
        dist = ones[start : start + block, None] + ones[None, :] - 2.0 * (chunk @ bits.T)
        rows, cols = np.nonzero(dist <= max_hamming + 0.5)
        for r, c in zip(rows + start, cols, strict=True):
            if r < c:
                a, b = find(int(r)), find(int(c))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.asarray([find(i) for i in range(n)], dtype=np.int64)


def harmonised_targets(
    policy: str,
    logits: NDArray[np.float64],
    forbidden: NDArray[np.bool_],
    active: NDArray[np.bool_],
    *,
    max_hamming: int,
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], int]:
    """One target per region, equal within each component; returns the targets and the number of
    components that hold more than one region. A component whose members forbid every class
    (their labels cover all classes) falls back to per-region targets."""
    if max_hamming < 0 or len(active) == 0:
        return choose_targets(policy, logits, forbidden, rng=rng), 0
    comp = pattern_components(active, max_hamming=max_hamming)
    roots, inverse = np.unique(comp, return_inverse=True)
    k = len(roots)
    comp_logits = np.zeros((k, logits.shape[1]))
    comp_forbidden = np.zeros((k, logits.shape[1]), dtype=bool)
    np.add.at(comp_logits, inverse, logits)
    np.logical_or.at(comp_forbidden, inverse, forbidden)
    full = comp_forbidden.all(axis=1)
    comp_forbidden[full] = False  # placeholder, replaced per region below
    comp_targets = choose_targets(policy, comp_logits, comp_forbidden, rng=rng)
    targets = comp_targets[inverse]
    split = np.asarray(full, dtype=bool)[inverse]
    if split.any():
        targets[split] = choose_targets(policy, logits[split], forbidden[split], rng=rng)
    sizes = np.bincount(inverse, minlength=k)
    return np.asarray(targets, dtype=np.int64), int((sizes > 1).sum())
