"""The optional membership.inference check of audit verify: opt-in, one- or two-sided policy,
fail-closed when it cannot run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from audit.verify import MembershipPolicy, Policy, verify_proof
from tests.audit.adversarial.kit import ProofKit, session_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _run(kit: ProofKit, membership: MembershipPolicy | None, **changes: object) -> object:
    policy = Policy(membership=membership)
    return verify_proof(
        kit.inputs(**changes),
        now=kit.now,
        rng=np.random.default_rng(0),
        policy=policy,
        checks=["membership.inference"],
    )


def test_not_requested_is_not_run(kit: ProofKit) -> None:
    report = _run(kit, None)
    outcome = report.outcome("membership.inference")  # type: ignore[attr-defined]
    assert outcome.status == "not-run" and "not requested" in outcome.detail


def test_one_sided_passes_and_two_sided_flags_deleted_records(kit: ProofKit) -> None:
    one = _run(kit, MembershipPolicy(attack="loss", sides="one"))
    outcome = one.outcome("membership.inference")  # type: ignore[attr-defined]
    assert outcome.status == "pass", outcome.detail
    assert outcome.evidence["forget"] == len(kit.rows)
    two = _run(kit, MembershipPolicy(attack="loss", sides="two"))
    outcome = two.outcome("membership.inference")  # type: ignore[attr-defined]
    # the honest patch pushes every forgotten sample to a confident wrong label: it stands out
    assert outcome.status == "fail" and "stands out as deleted" in outcome.detail
    assert outcome.evidence["auc"] < 0.4


def test_membership_without_reference_data_fails_closed(kit: ProofKit) -> None:
    report = _run(kit, MembershipPolicy(attack="loss"), reference=None)
    outcome = report.outcome("membership.inference")  # type: ignore[attr-defined]
    assert outcome.status == "fail" and "--reference" in outcome.detail


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        MembershipPolicy(max_gap=0.7)
    with pytest.raises(ValueError):
        replace(MembershipPolicy(), sides="three")  # type: ignore[arg-type]


@pytest.mark.parametrize("attack", ["gap", "boundary", "cmia"])
def test_every_registered_attack_runs_in_the_check(kit: ProofKit, attack: str) -> None:
    """The label-only attacks and CMIA run through the same check (and its CLI choice list,
    which is the attack registry)."""
    from audit.cli._verify import verify as verify_command
    from audit.mia import ATTACKS

    option = next(p for p in verify_command.params if p.name == "mia_attack")
    assert set(option.type.choices) == set(ATTACKS)  # type: ignore[attr-defined]
    report = _run(kit, MembershipPolicy(attack=attack, sides="one"))
    outcome = report.outcome("membership.inference")  # type: ignore[attr-defined]
    assert outcome.status in ("pass", "fail"), outcome.detail
    assert outcome.evidence["forget"] == len(kit.rows)
    assert 0.0 <= outcome.evidence["auc"] <= 1.0
