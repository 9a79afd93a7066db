"""The report's threat coverage: a check counts for a threat only where it can catch it."""

from __future__ import annotations

from audit.report._build import _threats
from audit.verify._framework import CheckOutcome


def _row(rows: list[dict[str, object]], number: int) -> dict[str, object]:
    return next(r for r in rows if r["number"] == number)


def test_claims_policy_covers_residual_memorisation_only_for_a_class_deletion() -> None:
    outcomes = [CheckOutcome("claims.policy", "pass", "ok")]
    sample = _row(_threats(outcomes, False), 9)
    assert not sample["covered"] and "canaries" in str(sample["why"])
    klass = _row(_threats(outcomes, False, class_mode=True), 9)
    assert klass["covered"] and "claims.policy" in str(klass["why"])


def test_a_check_that_did_not_run_covers_nothing() -> None:
    outcomes = [CheckOutcome("claims.policy", "not-run", "skipped")]
    assert not _row(_threats(outcomes, False, class_mode=True), 9)["covered"]
