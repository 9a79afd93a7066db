"""``claims.policy``: what the certificate promises, before any model runs.

VERIFIED requires every claim to be ``certified`` (a promise over the sample's whole region,
proved by ``region.certificate``) with a margin of at least ``Policy.min_certified_margin``.
A class-suppression proof (``class_claim``) is exempt: its per-sample claims are implied by the
class claim, which ``class.suppression`` proves over the whole box.
Point-only claims (a promise at the sample alone, checked only by replay) give the distinct
verdict ``point-only`` (exit 1 unless the auditor passes ``--accept-point-only``); a claim
below the minimum margin fails: a hair margin says nothing about the served float32 model.

A class-suppression certificate (a ``class_claim``) promises more than its per-leaf claims: the
class is never predicted anywhere on the declared box, with the class claim's margin, proved by
``class.suppression`` (canonical graph, the verifier's own bound, exact replay). Its per-leaf
claims are the point replay of the class's training samples (labels checked to be the class by
``replay.claims``) and are covered by the class claim: they count as certified, and the class
claim's margin is what meets the minimum, ``Policy.min_class_margin`` (default 4: the class keeps
at most ``e^-4`` of the top class's probability)."""

from __future__ import annotations

from collections import Counter

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome
from audit.verify._report import POINT_ONLY_EVIDENCE
from prune.formats import ClaimRecord

__all__ = ["ClaimsPolicy"]


class ClaimsPolicy(Check[VerifyContext]):
    name = "claims.policy"
    summary = (
        "every claim is certified over its region with at least the minimum margin "
        "(point-only claims give the distinct verdict point-only)"
    )

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate = ctx.predicate
        claims = predicate.claims
        kinds = Counter(c.kind for c in claims)
        regions = Counter(c.region for c in claims)
        minimum = ctx.policy.min_certified_margin
        margins = [c.margin for c in claims if isinstance(c, ClaimRecord)]
        low = [c for c in claims if isinstance(c, ClaimRecord) and c.margin < minimum]
        class_claim = ctx.predicate.class_claim
        if class_claim is not None:
            return self._class_covered(ctx, len(claims), float(class_claim.margin), minimum)
        evidence = {
            "claims": len(claims),
            "kinds": dict(kinds),
            "certified_claims": regions.get("certified", 0),
            POINT_ONLY_EVIDENCE: regions.get("point-only", 0),
            "min_margin": min(margins, default=None),
            "min_certified_margin": minimum,
        }
        if predicate.class_claim is not None:
            evidence[POINT_ONLY_EVIDENCE] = 0
            return self.passed(
                f"class suppression: the {len(claims)} sample claims are covered by the class "
                f"claim over the whole input box (checked by class.suppression)",
                **evidence,
            )
        if low:
            return self.failed(
                f"{len(low)} claims state a margin below the minimum {minimum:g} (first: leaf "
                f"{low[0].leaf_index}, margin {low[0].certified_margin})",
                **evidence,
            )
        point_only = regions.get("point-only", 0)
        if point_only:
            return self.passed(
                f"{point_only} of {len(claims)} claims are point-only (verdict point-only)",
                **evidence,
            )
        return self.passed(
            f"all {len(claims)} claims certified over their regions, margin >= {minimum:g}",
            **evidence,
        )

    def _class_covered(
        self, ctx: VerifyContext, claims: int, margin: float, minimum: float
    ) -> CheckOutcome:
        class_minimum = max(minimum, ctx.policy.min_class_margin)
        evidence = {
            "claims": claims,
            "class_claim": True,
            "certified_claims": claims,
            POINT_ONLY_EVIDENCE: 0,
            "min_margin": margin,
            "min_certified_margin": minimum,
            "min_class_margin": class_minimum,
        }
        if not margin >= class_minimum:
            return self.failed(
                f"the class claim's margin {margin:g} is below the minimum {class_minimum:g}: the "
                "class would keep a non-negligible share of the probability where it was the top "
                "class",
                **evidence,
            )
        return self.passed(
            f"class claim over the whole box (margin {margin:g}) covers all {claims} claims of "
            "the class's training samples",
            **evidence,
        )
