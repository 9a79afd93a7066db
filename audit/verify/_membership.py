"""``membership.inference`` (optional): does the served model still reveal that the forgotten
samples were training members?

The auditor splits its reference data in two (seeded): one half trains its reference models, the
other half are held-out non-members; the chosen attack (:mod:`audit.mia`) then compares the forget
set with those non-members on the served model. Policy (:class:`MembershipPolicy`):

* ``sides="one"`` (default, the threat is *residual memorisation*): fail when the forget set looks
  like members — AUC above ``0.5 + max_gap`` or TPR at ``fpr`` above ``max_tpr``;
* ``sides="two"``: also fail when it looks *less* like members than real non-members (AUC below
  ``0.5 - max_gap`` or reversed TPR above ``max_tpr``). Every prediction-changing method, honest
  PRUNE included, fails this: it says "these records were deleted" (docs/MIA.md, threat 11).

Both directions are always measured and kept in the evidence. With ``sides="two"`` the evidence
also holds the two-version comparison (:mod:`audit.verify._two_version`: original vs served
model, output change on the forget set vs on the non-members), and the summary says in words
whether deletion is detectable to a single-model attacker and to one holding both versions; the
two-version result is reported, not judged (no local repair can pass it). The check is opt-in
(it trains models); when not requested it is reported as not run, not as a pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from audit.errors import AuditError
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable

__all__ = ["MembershipInference", "MembershipPolicy"]


@dataclass(frozen=True, kw_only=True)
class MembershipPolicy:
    attack: str = "rmia"
    reference_models: int = 4
    max_gap: float = 0.1
    max_tpr: float = 0.05
    fpr: float = 0.01
    sides: Literal["one", "two"] = "one"
    arch: str | None = None
    seed: int = 0
    backend: str = "local"  # where reference models train (audit.mia._execution)
    address: str | None = None
    jobs: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_gap <= 0.5 or not 0.0 <= self.max_tpr <= 1.0:
            raise ValueError("max_gap must lie in [0, 0.5] and max_tpr in [0, 1]")
        if self.sides not in ("one", "two"):
            raise ValueError("sides must be 'one' or 'two'")


class MembershipInference(Check[VerifyContext]):
    name = "membership.inference"
    summary = "the forget set does not stand out from held-out non-members (membership attack)"
    # inputs are checked in run(): a check that was not requested needs none of them

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        policy: MembershipPolicy | None = ctx.policy.membership
        if policy is None:
            return self.not_applicable("not requested (audit verify --mia ATTACK runs it)")
        from audit.mia import ThresholdPolicy, forget_set_check, resolve_architecture

        if ctx.reference is None:
            raise CheckUnavailable("no --reference given")  # --forget/--original: ctx raises
        x, y = ctx.reference
        if len(y) < 20:
            raise CheckUnavailable("too few reference points to train reference models")
        openings = ctx.openings()
        order = np.random.default_rng(policy.seed).permutation(len(y))
        ref, non = order[: len(y) // 2], order[len(y) // 2 :]
        try:
            arch = resolve_architecture(
                onnx_model=ctx.original_bytes(),
                declared=policy.arch,
                input_shape=tuple(int(d) for d in x.shape[1:]),
                classes=int(max(y.max(), openings.y.max())) + 1,
            )
            result = forget_set_check(
                ctx.patched_model().logits,
                openings.x,
                openings.y,
                x[non],
                y[non],
                x[ref],
                y[ref],
                architecture=arch,
                attack=policy.attack,
                reference_models=policy.reference_models,
                policy=ThresholdPolicy(max_distinguishability=0.5, max_tpr=1.0, fpr=policy.fpr),
                seed=policy.seed,
                jobs=policy.jobs,
                backend=policy.backend,
                address=policy.address,
            )
        except AuditError as exc:
            raise CheckUnavailable(f"membership attack could not run: {exc}") from exc
        m = result.metrics
        auc = m.auc.value
        tpr, rev = m.tpr(policy.fpr).value, m.tpr(policy.fpr, reverse=True).value
        evidence = {
            "attack": policy.attack,
            "sides": policy.sides,
            "reference_models": policy.reference_models,
            "forget": m.members,
            "non_members": m.non_members,
            "auc": auc,
            "auc_low": m.auc.low,
            "auc_high": m.auc.high,
            f"tpr_at_{policy.fpr:g}": tpr,
            f"reverse_tpr_at_{policy.fpr:g}": rev,
        }
        problems = []
        if auc > 0.5 + policy.max_gap or tpr > policy.max_tpr:
            problems.append(
                f"the forget set still looks like members (AUC {auc:.3f}, TPR@{policy.fpr:g}FPR "
                f"{tpr:.3f})"
            )
        if policy.sides == "two" and (auc < 0.5 - policy.max_gap or rev > policy.max_tpr):
            problems.append(
                f"the forget set stands out as deleted (AUC {auc:.3f}, reversed "
                f"TPR@{policy.fpr:g}FPR {rev:.3f})"
            )
        summary = f"{policy.attack}, {policy.sides}-sided: {result.detail.split(';')[0]}"
        if policy.sides == "two":
            two = self._two_version(ctx, openings.x, x[non], policy)
            evidence.update(two)
            summary += (
                "; deletion "
                + ("stands out" if problems else "is not detectable")
                + " to a single-model attacker; "
                + str(two["two_version_words"])
            )
        if problems:
            if "two_version_words" in evidence:
                problems.append(
                    "deletion stands out to a single-model attacker; "
                    + str(evidence["two_version_words"])
                )
            return self.failed("; ".join(problems), **evidence)
        return self.passed(summary, **evidence)

    @staticmethod
    def _two_version(
        ctx: VerifyContext,
        forget_x: NDArray[np.float32],
        non_x: NDArray[np.float32],
        policy: MembershipPolicy,
    ) -> dict[str, object]:
        from audit.verify._two_version import two_version_comparison

        m = two_version_comparison(
            ctx.original_model().logits,
            ctx.patched_model().logits,
            forget_x,
            non_x,
            seed=policy.seed,
        )
        auc = m.auc.value
        seen = auc > 0.5 + policy.max_gap
        words = (
            f"to an attacker holding both versions it is detectable (output-change AUC {auc:.3f})"
            if seen
            else f"not detectable by comparing both versions (output-change AUC {auc:.3f})"
        )
        return {
            "two_version_auc": auc,
            "two_version_auc_low": m.auc.low,
            "two_version_auc_high": m.auc.high,
            "two_version_detectable": seen,
            "two_version_words": words,
        }
