"""Issue 11 root causes, each caught by more than one check (defence in depth): NaN outputs fail
every check that reads them, batch-coupled patches fail the batch replay, point-only claims get
their own verdict, and hair margins fail the claim policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from audit.errors import VerificationError
from audit.verify import Policy, VerificationReport, verify_proof
from audit.verify._replay import margins, predictions
from tests.audit.adversarial.kit import ProofKit, session_kit
from tests.audit.adversarial.registry import reissued
from tests.audit.adversarial.tampers import ADVERSARIES


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _verify(kit: ProofKit, proof_inputs: object, **policy: object) -> VerificationReport:
    return verify_proof(
        proof_inputs,  # type: ignore[arg-type]
        now=kit.now,
        rng=np.random.default_rng(0),
        policy=Policy(**policy),  # type: ignore[arg-type]
    )


def test_nan_target_fails_replay_probes_and_structure(kit: ProofKit, tmp_path: Path) -> None:
    tampered = ADVERSARIES["patch_nan_target"].build(kit, tmp_path)
    report = _verify(kit, tampered.inputs)
    for name in ("structure.patch", "replay.claims", "replay.batch", "region.probes"):
        outcome = report.outcome(name)
        assert outcome.status == "fail", outcome
    assert "NaN or infinity" in report.outcome("replay.claims").detail


def test_batch_coupled_patch_fails_batch_replay(kit: ProofKit, tmp_path: Path) -> None:
    tampered = ADVERSARIES["patch_batch_coupled"].build(kit, tmp_path)
    report = _verify(kit, tampered.inputs)
    batch = report.outcome("replay.batch")
    assert batch.status == "fail" and "gets another output than alone" in batch.detail


def test_point_only_claims_get_their_own_verdict(kit: ProofKit, tmp_path: Path) -> None:
    claims = [replace(c, region="point-only") for c in kit.claims]
    tampered = reissued(kit, tmp_path, claims=claims)
    report = _verify(kit, tampered.inputs)
    assert report.verdict == "point-only" and not report.verified and not report.accepted
    assert report.point_only_claims == len(kit.claims)
    assert report.to_json()["point_only_claims"] == len(kit.claims)
    with pytest.raises(VerificationError, match="point-only"):
        report.raise_for_failure()
    accepted = _verify(kit, tampered.inputs, accept_point_only=True)
    assert accepted.verdict == "point-only" and accepted.accepted
    accepted.raise_for_failure()
    assert VerificationReport.from_json(accepted.to_json()).verdict == "point-only"


def test_margin_below_policy_minimum_fails(kit: ProofKit) -> None:
    report = _verify(kit, kit.inputs(), min_certified_margin=5.0)
    assert report.outcome("claims.policy").status == "fail"


def test_margins_and_predictions_are_nan_safe() -> None:
    logits = np.array([[0.0, np.nan, 1.0], [3.0, 1.0, 0.0], [np.inf, 0.0, 0.0]], np.float32)
    target = np.array([2, 0, 0])
    got = margins(logits, target)
    assert got[0] == -np.inf and got[1] == 2.0 and got[2] == -np.inf
    assert predictions(logits).tolist() == [-1, 0, -1]


def test_report_compliance_text_names_the_point_only_verdict(kit: ProofKit, tmp_path: Path) -> None:
    from audit.report._build import _compliance

    claims = [replace(c, region="point-only") for c in kit.claims]
    tampered = reissued(kit, tmp_path, claims=claims)
    for accept in (False, True):
        report = _verify(kit, tampered.inputs, accept_point_only=accept)
        text = _compliance(None, report, {"replayed": 0, "probed": 0}, None)
        words = " ".join(str(v) for v in text.values())
        assert "POINT-ONLY" in words and f"{len(kit.claims)} claims" in words
        assert "Failed checks: ." not in words
        assert ("accepted point-only claims explicitly" in words) == accept


def test_gate_sharpness_below_policy_minimum_fails(kit: ProofKit) -> None:
    """A blunt gate (small ``n``) widens the band in which another patch may fire inside a
    certified region, the one exception of ``region.certificate``: the policy bounds it."""
    n = float(kit.spec.n)
    assert _verify(kit, kit.inputs()).outcome("structure.patch").status == "pass"
    strict = _verify(kit, kit.inputs(), min_gate_sharpness=2 * n)
    outcome = strict.outcome("structure.patch")
    assert outcome.status == "fail" and "gate sharpness" in outcome.detail
