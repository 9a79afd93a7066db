"""Threat 21 (``shared_region``): two patches gated on one linear region are refused by
``structure.patch``. ``region.certificate`` proves each claim for its own patch where every
other gate is off; on a region that two patches share, both gates are on everywhere, so the
claims' proofs cover nothing and the served sum can give the original label (the adversary
``threat_models.adversaries.SharedRegion`` earned VERIFIED before this rule)."""

from __future__ import annotations

import numpy as np

from audit.verify._patch import PatchParams
from audit.verify._structure import _shared_region


def _activation(patterns: list[list[int]]) -> PatchParams:
    pos = np.asarray(patterns, dtype=np.float64).T  # [H, P]
    patches = pos.shape[1]
    return PatchParams(
        gate="activation",
        n=1000.0,
        K=np.ones(patches),
        d=np.zeros((patches, 3)),
        C=None,
        pos=pos,
        neg=1.0 - pos,
    )


def test_two_patches_with_one_pattern_are_refused() -> None:
    params = _activation([[1, 0, 1], [0, 1, 1], [1, 0, 1]])
    z = np.zeros((3, 3))
    problem = _shared_region(params, z, np.array([0, 1, 2]))
    assert problem is not None and "patches 0 and 2 gate the same linear region" in problem


def test_distinct_patterns_and_shared_patches_pass() -> None:
    params = _activation([[1, 0, 1], [0, 1, 1]])
    z = np.zeros((3, 3))
    # two claims on one patch (samples of one region share it) is the honest grouping
    assert _shared_region(params, z, np.array([0, 1, 1])) is None


def test_dense_gate_compares_the_claimed_samples_regions() -> None:
    params = PatchParams(
        gate="dense",
        n=1000.0,
        K=np.ones(2),
        d=np.zeros((2, 3)),
        C=None,
        A=np.zeros((4, 6)),
        b=np.zeros(6),
    )
    same = np.array([[0.5, -1.0, 2.0], [0.1, -3.0, 0.7]])  # one sign pattern, two patches
    problem = _shared_region(params, same, np.array([0, 1]))
    assert problem is not None and "patches 0 and 1" in problem
    other = np.array([[0.5, -1.0, 2.0], [-0.1, -3.0, 0.7]])
    assert _shared_region(params, other, np.array([0, 1])) is None
    # claims that share one patch are one region, not two
    assert _shared_region(params, same, np.array([0, 0])) is None
