"""Threat 21 (``shared_region``): two patches gated on one linear region are refused by
``structure.patch``. ``region.certificate`` proves each claim for its own patch where every
other gate is off; on a region that two patches share, both gates are on everywhere, so the
claims' proofs cover nothing and the served sum can give the original label (the adversary
``threat_models.adversaries.SharedRegion`` earned VERIFIED before this rule)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from audit.verify import Policy, verify_proof
from audit.verify._patch import PatchParams
from audit.verify._structure import _flat_neurons, _shared_region
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


def test_patterns_that_differ_only_in_a_neuron_flat_on_the_region_are_one_region() -> None:
    """A neuron that is 0 over the whole box on the region (e.g. all its weights and its bias
    0) constrains nothing: two patterns that differ only there gate the same set, and both
    gates are 1 on it."""
    params = _activation([[1, 0, 1], [1, 0, 0]])
    z = np.array([[0.5, -2.0, 0.0], [0.4, -1.0, 0.0]])
    assert _shared_region(params, z, np.array([0, 1])) is None  # distinct patterns
    flat = np.array([[False, False, True], [False, False, False]])
    problem = _shared_region(params, z, np.array([0, 1]), flat=flat)
    assert problem is not None and "patches 0 and 1 gate the same linear region" in problem
    live = np.array([[False, True, False], [False, False, False]])  # a flat neuron they share
    assert _shared_region(params, z, np.array([0, 1]), flat=live) is None


class _Head:
    """``z = W x + c`` on every region: neuron 1 has no weights and no bias (flat), neuron 2
    is 0 at the sample but has a slope."""

    def local_affine(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        rows = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
        offs = np.array([0.5, 0.0, -0.25])
        return rows, offs, np.zeros((2, 2)), np.zeros(2)


def test_flat_neurons_are_the_ties_that_stay_zero_over_the_box() -> None:
    ctx = SimpleNamespace(
        affine_head=lambda: _Head(),
        predicate=SimpleNamespace(method={"input_box": {"low": "0.0", "high": "1.0"}}),
    )
    x = np.array([[0.5, 0.25], [0.1, 0.9]])
    z = np.array([[1.0, 0.0, 0.0], [0.6, 0.0, 0.65]])
    flat = _flat_neurons(ctx, x, z)  # type: ignore[arg-type]
    assert flat is not None
    assert flat.tolist() == [[False, True, False], [False, True, False]]
    assert _flat_neurons(ctx, x, z + 1.0) is None  # type: ignore[arg-type]  # no tie at all


def test_flat_neurons_without_a_box_are_only_the_constant_zero_ones() -> None:
    ctx = SimpleNamespace(affine_head=lambda: _Head(), predicate=SimpleNamespace(method={}))
    x = np.array([[0.5, 0.25]])
    z = np.array([[1.0, 0.0, 0.0]])
    flat = _flat_neurons(ctx, x, z)  # type: ignore[arg-type]
    assert flat is not None and flat.tolist() == [[False, True, False]]
