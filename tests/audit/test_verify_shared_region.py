"""Threat 21 (``shared_region``): two patches gated on one linear region are refused by
``structure.patch``. ``region.certificate`` proves each claim for its own patch where every
other gate is off; on a region that two patches share, both gates are on everywhere, so the
claims' proofs cover nothing and the served sum can give the original label (the adversary
``threat_models.adversaries.SharedRegion`` earned VERIFIED before this rule)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from audit.verify import Policy, verify_proof
from audit.verify._patch import PatchParams
from audit.verify._structure import _shared_region
from tests.audit.adversarial.kit import ProofKit, session_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def test_a_second_patch_on_a_claimed_region_fails_structure_patch(
    kit: ProofKit, tmp_path: Path
) -> None:
    """A signed proof with a second leaf (the first sample again, a decoy) and a second patch
    on its pattern: every other check passes, each claim is certified for its own patch, but
    both gates are on over the whole region; ``structure.patch`` names the two patches."""
    spec = kit.spec
    extra = len(spec.d)
    doubled = replace(
        spec,
        pos=np.concatenate([spec.pos, spec.pos[:, :1]], axis=1),
        neg=np.concatenate([spec.neg, spec.neg[:, :1]], axis=1),
        d=np.concatenate([spec.d, spec.d[:1]]),
        K=np.concatenate([spec.K, spec.K[:1]]),
    )
    decoy = replace(kit.claims[0], leaf_index=len(kit.claims), patch=extra)
    proof = kit.reissue(
        tmp_path / "proof",
        rows=np.concatenate([kit.rows, kit.rows[:1]]),
        spec=doubled,
        claims=(*kit.claims, decoy),
    )
    report = verify_proof(
        kit.inputs(proof), now=kit.now, rng=np.random.default_rng(0), policy=Policy()
    )
    failed = {o.name for o in report.outcomes if o.status == "fail"}
    assert failed == {"structure.patch"}, failed
    assert report.outcome("region.certificate").status == "pass"
    assert f"patches 0 and {extra} gate the same linear region" in (
        report.outcome("structure.patch").detail
    )
    assert not report.verified


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
