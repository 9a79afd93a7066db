"""The optional membership-inference check of ``audit verify``: does the forget set still stand
out from held-out non-members, in either direction, beyond what the auditor tolerates?

Fail-closed: anything that prevents the attack from running raises an :class:`AuditError` (the
verifier reports the check as failed); a result is ``passed`` only when every number the policy
names is within its bound. Two-sided on purpose: a patch that pushes forgotten samples to
confident wrong labels makes them look *less* like members than real non-members, which a
membership attack detects just as well (distinguishability and reversed TPR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._arch import Architecture
from audit.mia._game import LabelledData
from audit.mia._metrics import AttackMetrics, Estimate
from audit.mia._runner import MiaConfig, unlearning_audit
from audit.mia._signals import LogitsFn
from audit.mia._train import TrainingRecipe

__all__ = ["MiaCheckResult", "ThresholdPolicy", "forget_set_check"]


@dataclass(frozen=True)
class ThresholdPolicy:
    """Bounds the auditor sets. ``decide_on="estimate"`` compares point estimates;
    ``"ci-low"`` compares the lower end of the bootstrap interval (fails only on significant
    leakage: more lenient with small forget sets). The interval is the two-level bootstrap over
    reference models and candidates (``model_bootstrap`` of :func:`forget_set_check`), so a
    verdict on it accounts for the luck of the auditor's reference seed."""

    max_distinguishability: float = 0.1
    max_tpr: float = 0.05
    fpr: float = 0.01
    decide_on: Literal["estimate", "ci-low"] = "estimate"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_distinguishability <= 0.5:
            raise InputError("max_distinguishability is |AUC - 0.5|, so it lies in [0, 0.5]")
        if not 0.0 <= self.max_tpr <= 1.0 or not 0.0 < self.fpr < 1.0:
            raise InputError("max_tpr must lie in [0, 1] and fpr in (0, 1)")
        if self.decide_on not in ("estimate", "ci-low"):
            raise InputError("decide_on must be 'estimate' or 'ci-low'")

    def value(self, estimate: Estimate) -> float:
        return estimate.value if self.decide_on == "estimate" else estimate.low


@dataclass(frozen=True)
class MiaCheckResult:
    """Outcome with the numbers behind it; ``detail`` is one line for the verifier's report."""

    passed: bool
    attack: str
    policy: ThresholdPolicy
    metrics: AttackMetrics
    reference_models: int
    detail: str
    forget_scores: tuple[float, ...] | None = None


def forget_set_check(
    model: LogitsFn,
    forget_x: NDArray[np.float32],
    forget_y: NDArray[np.int64],
    non_member_x: NDArray[np.float32],
    non_member_y: NDArray[np.int64],
    reference_x: NDArray[np.float32],
    reference_y: NDArray[np.int64],
    *,
    architecture: Architecture,
    attack: str = "rmia",
    reference_models: int = 4,
    policy: ThresholdPolicy | None = None,
    recipe: TrainingRecipe | None = None,
    seed: int = 0,
    bootstrap: int = 1000,
    model_bootstrap: int = 20,
    train_size: int | None = None,
    sample_scores: bool = False,
    jobs: int = 1,
    backend: str = "local",
    address: str | None = None,
    device: str = "auto",
) -> MiaCheckResult:
    """Run one attack in the unlearning game on the deployed ``model`` and apply ``policy``
    (default :class:`ThresholdPolicy`); reference models use ``recipe`` (default
    :class:`TrainingRecipe`) and ``train_size`` samples each. ``sample_scores`` keeps each
    forget-set sample's score in the result (``forget_scores``, in input order)."""
    policy = policy or ThresholdPolicy()
    config = MiaConfig(
        attacks=(attack,),
        reference_models=reference_models,
        recipe=recipe or TrainingRecipe(),
        seed=seed,
        bootstrap=bootstrap,
        model_bootstrap=min(model_bootstrap, bootstrap),
        fprs=(policy.fpr,),
        jobs=jobs,
        backend=backend,
        address=address,
        device=device,
        train_size=train_size,
        sample_scores=sample_scores,
    )
    result = unlearning_audit(
        original=None,
        patched=model,
        forget=LabelledData(forget_x, forget_y),
        non_members=LabelledData(non_member_x, non_member_y),
        reference=LabelledData(reference_x, reference_y),
        architecture=architecture,
        config=config,
    )
    patched = result.model("patched")
    metrics = patched.attack(attack)
    scores = next(a.scores for a in patched.attacks if a.attack == attack)
    dist = metrics.distinguishability
    tpr, rev = metrics.tpr(policy.fpr), metrics.tpr(policy.fpr, reverse=True)
    failures = []
    if policy.value(dist) > policy.max_distinguishability:
        failures.append(f"|AUC-0.5| {policy.value(dist):.3f} > {policy.max_distinguishability}")
    for label, est in (("TPR", tpr), ("reversed TPR", rev)):
        if policy.value(est) > policy.max_tpr:
            failures.append(f"{label}@{policy.fpr:g}FPR {policy.value(est):.3f} > {policy.max_tpr}")
    summary = (
        f"{attack} with {reference_models} reference models, {metrics.members} forget vs "
        f"{metrics.non_members} non-members: AUC {metrics.auc.value:.3f} "
        f"[{metrics.auc.low:.3f}, {metrics.auc.high:.3f}], TPR@{policy.fpr:g}FPR "
        f"{tpr.value:.3f}, reversed {rev.value:.3f}"
    )
    detail = summary + (
        "; exceeds policy: " + ", ".join(failures) if failures else "; within policy"
    )
    return MiaCheckResult(
        passed=not failures,
        attack=attack,
        policy=policy,
        metrics=metrics,
        reference_models=reference_models,
        detail=detail,
        forget_scores=scores[0] if scores is not None else None,
    )
