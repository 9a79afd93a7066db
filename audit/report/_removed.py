"""What a verified certificate says was removed, in the words a compliance reader files.

A class deletion is worded by what was actually certified and checked: a class-suppression
claim removes the class (never predicted on the declared input box); a region-only class
deletion changes only the regions of the class's training samples, and says so."""

from __future__ import annotations

from typing import Any

from audit.verify import VerificationReport
from prune.formats import Statement

__all__ = ["removed_statement", "requested_what"]


def requested_what(statement: Statement) -> str:
    """The object of "the owner certified the erasure of ..."."""
    p = statement.predicate
    if p.mode != "class":
        return f"{p.forget_set.size} individual training samples"
    if p.class_claim is not None:
        return (
            f"class {p.forget_class} as a whole ({p.class_claim.removed}; logit margin "
            f"{p.class_claim.margin}), including its {p.forget_set.size} training samples"
        )
    return (
        f"the {p.forget_set.size} training samples of class {p.forget_class}, on their linear "
        "regions only (region-only mode: the class itself is not claimed to be gone)"
    )


def removed_statement(statement: Statement | None, verification: VerificationReport) -> str:
    """One sentence: exactly what this audit found removed (or that nothing can be relied on)."""
    if statement is None or not verification.verified:
        return "Nothing: the proof was not verified."
    p = statement.predicate
    checks = {o.name: o for o in verification.outcomes}
    if p.mode != "class":
        return (
            f"{p.forget_set.size} individual training samples: the served model no longer gives "
            "them their original prediction (on their claimed regions)."
        )
    reference: Any = checks.get("class.reference")
    seen = reference.evidence.get("reference_of_class") if reference is not None else None
    on_data = (
        f"; none of the auditor's {seen} held-out samples of class {p.forget_class} gets it"
        if seen
        else ""
    )
    if p.class_claim is not None:
        return (
            f"Class {p.forget_class}: {p.class_claim.removed} (proved by the auditor's own bound "
            f"over the box and an exact replay){on_data}."
        )
    return (
        f"The linear regions of the {p.forget_set.size} training samples of class "
        f"{p.forget_class}{on_data}."
    )
