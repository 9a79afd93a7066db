"""The report's threat coverage: a check counts for a threat only where it covers it."""

from __future__ import annotations

from audit.report._build import _threats
from audit.verify._framework import CheckOutcome


def _row(rows: list[dict[str, object]], number: int) -> dict[str, object]:
    return next(r for r in rows if r["number"] == number)


def test_claims_policy_alone_does_not_cover_residual_memorisation() -> None:
    """Its class-margin minimum catches a near-tie class suppression, not memorisation."""
    row = _row(_threats([CheckOutcome("claims.policy", "pass", "ok")], False), 9)
    assert not row["covered"]
    assert "canaries" in str(row["why"]) and "claims.policy ran" in str(row["why"])


def test_a_check_that_ran_covers_its_threat_and_one_that_did_not_run_does_not() -> None:
    ran = _row(_threats([CheckOutcome("utility", "pass", "ok")], False), 8)
    assert ran["covered"] and "utility" in str(ran["why"])
    skipped = _row(_threats([CheckOutcome("utility", "not-run", "skipped")], False), 8)
    assert not skipped["covered"]


def test_the_forget_set_check_alone_does_not_cover_the_zero_push() -> None:
    """It fails the zero push on some settings only; the canaries measure it everywhere."""
    alone = _row(_threats([], True), 23)
    assert not alone["covered"]
    assert "membership.inference ran" in str(alone["why"]) and "canaries" in str(alone["why"])
    canaries = _row(_threats([CheckOutcome("membership.canaries", "fail", "members")], True), 23)
    assert canaries["covered"] and "membership.canaries" in str(canaries["why"])
