"""Every named adversarial fixture is rejected, by the check it targets, with its message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.verify import verify_proof
from tests.audit.adversarial.kit import ProofKit, session_kit
from tests.audit.adversarial.tampers import ADVERSARIES


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


@pytest.mark.parametrize("name", sorted(ADVERSARIES))
def test_adversary_is_rejected(name: str, kit: ProofKit, tmp_path: Path) -> None:
    adversary = ADVERSARIES[name]
    tampered = adversary.build(kit, tmp_path)
    report = verify_proof(
        tampered.inputs,
        now=tampered.now or kit.now,
        rng=np.random.default_rng(0),
        limits=tampered.limits,
    )
    assert report.verdict == "failed"
    outcome = report.outcome(adversary.check)
    assert outcome.status == "fail", (outcome, [o for o in report.outcomes if o.status == "fail"])
    assert adversary.message in outcome.detail
