"""``region.probes`` when no random probe point lands inside any region (a sample at the apex of
a region that has no interior the rays reach within the box, e.g. ties inside a pooling window
over a blank background): the exact LP decides instead, and a claim it refutes fails."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audit.verify import Policy, VerificationReport, _probes, verify_proof
from tests.audit.adversarial.kit import ProofKit, session_kit
from tests.audit.adversarial.registry import reissued


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


@pytest.fixture
def nothing_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime places no point other than the samples inside their regions."""

    def never(ctx: Any, points: Any, pattern: Any, box: Any, cut_shape: Any) -> Any:
        return np.zeros(len(points), dtype=bool)

    monkeypatch.setattr(_probes, "_inside", never)


def _verify(kit: ProofKit, inputs: object) -> VerificationReport:
    return verify_proof(
        inputs,  # type: ignore[arg-type]
        now=kit.now,
        rng=np.random.default_rng(0),
        policy=Policy(lp_claims=len(kit.claims)),
    )


@pytest.mark.usefixtures("nothing_inside")
def test_an_honest_proof_is_decided_by_the_exact_lp(kit: ProofKit) -> None:
    outcome = _verify(kit, kit.inputs()).outcome("region.probes")
    assert outcome.status == "pass", outcome
    assert "no probe point could be placed" in outcome.detail
    assert outcome.evidence["points"] == 0 and outcome.evidence["lp_claims"] >= 1


@pytest.mark.usefixtures("nothing_inside")
def test_an_inflated_margin_fails_without_probe_points(kit: ProofKit, tmp_path: Path) -> None:
    claims = [replace(c, certified_margin=1e4) for c in kit.claims]
    tampered = reissued(kit, tmp_path, claims=claims)
    outcome = _verify(kit, tampered.inputs).outcome("region.probes")
    assert outcome.status == "fail", outcome
    assert "exact LP finds a point" in outcome.detail
