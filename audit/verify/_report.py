"""The verification report: the outcomes, the fail-closed verdict, a versioned JSON document
and the terminal table.

JSON round trip: ``VerificationReport.from_json(r.to_json()) == r``. Readers reject documents
whose ``type`` or ``version`` they do not know."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from audit.errors import AuditError, InputError, VerificationError
from audit.verify._framework import CheckOutcome

__all__ = ["REPORT_TYPE", "REPORT_VERSION", "Verdict", "VerificationReport", "render_table"]

REPORT_TYPE = "https://prune-audit.dev/verification/v1"
REPORT_VERSION = 1

Verdict = Literal["verified", "point-only", "failed"]
POINT_ONLY_EVIDENCE = "point_only_claims"
"""Evidence key by which a passing check says how many claims hold only at their sample."""


def _verdict(outcomes: Sequence[CheckOutcome]) -> Verdict:
    """``failed`` if any check failed or none passed; ``point-only`` if every check passed but
    some claims are point-only (a weaker promise than a region, never reported as verified);
    else ``verified``."""
    if not outcomes:
        raise AuditError("no check outcomes: an empty list of checks is never a pass")
    if any(o.status == "fail" for o in outcomes):
        return "failed"
    if not any(o.status == "pass" for o in outcomes):
        return "failed"
    if any(int(o.evidence.get(POINT_ONLY_EVIDENCE, 0) or 0) > 0 for o in outcomes):
        return "point-only"
    return "verified"


@dataclass(frozen=True)
class VerificationReport:
    """Outcomes in check order plus what was verified (``subject``: paths and digests) and how
    (``settings``: the policy and the runtime). ``verdict`` is derived, never stored by hand."""

    kind: str
    outcomes: tuple[CheckOutcome, ...]
    subject: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def verdict(self) -> Verdict:
        return _verdict(self.outcomes)

    @property
    def verified(self) -> bool:
        return self.verdict == "verified"

    @property
    def point_only_claims(self) -> int:
        return max(
            (int(o.evidence.get(POINT_ONLY_EVIDENCE, 0) or 0) for o in self.outcomes), default=0
        )

    @property
    def accepted(self) -> bool:
        """Verified, or point-only with the auditor's explicit ``accept_point_only``."""
        policy = self.settings.get("policy", {})
        return self.verified or (
            self.verdict == "point-only" and bool(policy.get("accept_point_only", False))
        )

    @property
    def complete(self) -> bool:
        """False when a check was skipped because an input was not given (``--partial``);
        checks that do not apply (e.g. no previous batch) do not make a report partial."""
        return not any(
            o.status == "not-run" and "missing_inputs" in o.evidence for o in self.outcomes
        )

    @property
    def failures(self) -> tuple[CheckOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "fail")

    def outcome(self, name: str) -> CheckOutcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def raise_for_failure(self) -> None:
        """Raise :class:`VerificationError` naming the first failed check (fail-closed API);
        a point-only verdict raises unless the policy accepted it."""
        if self.accepted:
            return
        if self.verdict == "point-only":
            raise VerificationError(
                f"claims.policy: {self.point_only_claims} claims hold only at their sample "
                "(point-only), not over a region; pass --accept-point-only to accept that"
            )
        first = self.failures[0] if self.failures else None
        if first is None:
            raise VerificationError("no check passed")
        more = len(self.failures) - 1
        suffix = f" (and {more} more failed check{'s' if more > 1 else ''})" if more else ""
        raise VerificationError(f"{first.name}: {first.detail}{suffix}")

    def to_json(self) -> dict[str, Any]:
        return {
            "type": REPORT_TYPE,
            "version": REPORT_VERSION,
            "kind": self.kind,
            "verdict": self.verdict,
            "complete": self.complete,
            "point_only_claims": self.point_only_claims,
            "created": self.created,
            "subject": dict(self.subject),
            "settings": dict(self.settings),
            "checks": [o.to_dict() for o in self.outcomes],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VerificationReport:
        if doc.get("type") != REPORT_TYPE or doc.get("version") != REPORT_VERSION:
            raise InputError(
                f"verification report: unknown type/version {doc.get('type')!r} "
                f"{doc.get('version')!r}"
            )
        report = cls(
            kind=str(doc["kind"]),
            outcomes=tuple(CheckOutcome.from_dict(o) for o in doc["checks"]),
            subject=dict(doc.get("subject", {})),
            settings=dict(doc.get("settings", {})),
            created=str(doc.get("created", "")),
        )
        if report.verdict != doc.get("verdict"):
            raise InputError("verification report: stored verdict does not follow from the checks")
        return report


_MARK = {"pass": "PASS", "fail": "FAIL", "not-run": "----"}


def render_table(report: VerificationReport, *, width: int = 100) -> str:
    """A fixed-width table: one row per check (status, name, seconds, detail), then the verdict."""
    name_w = max(len(o.name) for o in report.outcomes)
    lines = [f"{'':4}  {'check':<{name_w}}  {'time':>7}  detail", "-" * width]
    room = max(20, width - name_w - 19)
    for o in report.outcomes:
        detail = o.detail if len(o.detail) <= room else o.detail[: room - 3] + "..."
        lines.append(f"{_MARK[o.status]:4}  {o.name:<{name_w}}  {o.seconds:6.2f}s  {detail}")
    lines.append("-" * width)
    counts = {s: sum(o.status == s for o in report.outcomes) for s in ("pass", "fail", "not-run")}
    tally = f"{counts['pass']} passed, {counts['fail']} failed, {counts['not-run']} not run"
    if report.verified:
        scope = "" if report.complete else " (partial: inputs missing, some checks did not run)"
        lines.append(f"VERIFIED{scope}: {tally}")
    elif report.verdict == "point-only":
        accepted = " (accepted by --accept-point-only)" if report.accepted else ""
        lines.append(
            f"POINT-ONLY{accepted}: {report.point_only_claims} claims hold only at their sample; "
            f"{tally}"
        )
    else:
        lines.append(f"FAILED: {tally}")
    return "\n".join(lines)
