"""``audit verify``: fail-closed verification of a PRUNE proof folder (docs/VERIFY.md).

>>> report = verify_proof(VerifyInputs(proof=..., public_key=..., original=..., forget=...,
...                                    reference=...), now=datetime.now(UTC),
...                       rng=np.random.default_rng())
>>> report.verified, report.verdict, [o.name for o in report.failures]

Each check in :data:`CHECKS` answers one question (stable names, see docs/VERIFY.md); the
:class:`Policy` says which inputs a "verified" verdict requires and the tolerances used."""

from __future__ import annotations

from audit.verify._context import VerifyContext, VerifyInputs
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable, Policy, run_checks
from audit.verify._membership import MembershipPolicy
from audit.verify._report import (
    REPORT_TYPE,
    REPORT_VERSION,
    VerificationReport,
    render_table,
)
from audit.verify._verify import CHECKS, verify_proof

__all__ = [
    "CHECKS",
    "REPORT_TYPE",
    "REPORT_VERSION",
    "Check",
    "CheckOutcome",
    "CheckUnavailable",
    "MembershipPolicy",
    "Policy",
    "VerificationReport",
    "VerifyContext",
    "VerifyInputs",
    "render_table",
    "run_checks",
    "verify_proof",
]
