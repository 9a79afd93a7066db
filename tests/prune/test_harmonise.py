from __future__ import annotations

import itertools

import numpy as np
import pytest

from prune.unlearn._harmonise import harmonised_targets, pattern_components


def _naive_components(active: np.ndarray, max_hamming: int) -> list[set[int]]:
    n = len(active)
    groups = [{i} for i in range(n)]
    for a, b in itertools.combinations(range(n), 2):
        if (active[a] != active[b]).sum() <= max_hamming:
            ga = next(g for g in groups if a in g)
            gb = next(g for g in groups if b in g)
            if ga is not gb:
                ga |= gb
                groups.remove(gb)
    return groups


@pytest.mark.parametrize("max_hamming", [0, 1, 3])
def test_components_match_naive_union(max_hamming: int) -> None:
    rng = np.random.default_rng(max_hamming)
    base = rng.random((6, 12)) < 0.5
    # near-duplicates: flip a few bits of a few base patterns
    rows = [base[i % 6] ^ (rng.random(12) < 0.12) for i in range(30)]
    active = np.stack(rows)
    comp = pattern_components(active, max_hamming=max_hamming)
    got = {frozenset(np.flatnonzero(comp == c).tolist()) for c in np.unique(comp)}
    want = {frozenset(g) for g in _naive_components(active, max_hamming)}
    assert got == want


def test_neighbours_share_a_target_and_avoid_every_label() -> None:
    active = np.array([[1, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
    logits = np.array([[5.0, 4.0, 0.0], [0.0, 5.0, 4.0], [5.0, 1.0, 4.0]])
    forbidden = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    targets, merged = harmonised_targets(
        "runner-up", logits, forbidden, active, max_hamming=1, rng=np.random.default_rng(0)
    )
    assert merged == 1
    assert targets[0] == targets[1] == 2  # neither row's label, best summed logit
    assert targets[2] == 2
    assert not forbidden[np.arange(3), targets].any()


def test_component_forbidding_everything_falls_back_per_region() -> None:
    active = np.array([[1, 0], [1, 1]], dtype=bool)
    logits = np.array([[3.0, 1.0], [1.0, 3.0]])
    forbidden = np.array([[1, 0], [0, 1]], dtype=bool)
    targets, _ = harmonised_targets(
        "runner-up", logits, forbidden, active, max_hamming=1, rng=np.random.default_rng(0)
    )
    assert targets.tolist() == [1, 0]
