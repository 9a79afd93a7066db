"""Membership-inference audit (verifier side): does a model still reveal that a person's data
was in training?

Attacks are estimators in :data:`ATTACKS` (``fit(reference=...)``, ``score(target, x, y)``,
higher = more member-like): LOSS, confidence, modified entropy, the shadow-model attack, LiRA
(online/offline, fixed/per-example variance), RMIA offline, and the label-only gap and
decision-boundary attacks. Reference models are the
auditor's own torch models, trained on its reference data in parallel (joblib backends, Ray or
Dask optional). :func:`membership_audit` plays members vs non-members, :func:`unlearning_audit`
the unlearning game (U-MIA), :func:`forget_set_check` is the optional check of ``audit verify``.
The target model is only ever queried through a logits function (``OnnxModel.logits``).
See docs/MIA.md for the method and recorded results.
"""

from __future__ import annotations

from audit.mia._arch import ARCHITECTURES, Architecture, resolve_architecture
from audit.mia._base import Attack
from audit.mia._check import MiaCheckResult, ThresholdPolicy, forget_set_check
from audit.mia._game import (
    DOCUMENT_TYPE,
    AttackResult,
    GameResult,
    LabelledData,
    ModelResult,
    run_game,
)
from audit.mia._label_only import BoundaryAttack, GapAttack
from audit.mia._lira import LiraAttack
from audit.mia._metrics import AttackMetrics, Estimate, evaluate, roc_curve
from audit.mia._onnx_torch import OnnxModule
from audit.mia._recipe import OwnerRecipe, read_train_json
from audit.mia._reference import BACKENDS, ReferenceSet, train_reference_models
from audit.mia._registry import ATTACKS, make_attack
from audit.mia._rmia import RmiaAttack
from audit.mia._runner import MiaConfig, build_attacks, membership_audit, unlearning_audit
from audit.mia._shadow import ShadowAttack
from audit.mia._signals import LogitsFn
from audit.mia._threshold import ConfidenceAttack, EntropyAttack, LossAttack
from audit.mia._train import TrainingRecipe, retrain, torch_logits_fn

__all__ = [
    "ARCHITECTURES",
    "ATTACKS",
    "BACKENDS",
    "DOCUMENT_TYPE",
    "Architecture",
    "Attack",
    "AttackMetrics",
    "AttackResult",
    "BoundaryAttack",
    "ConfidenceAttack",
    "EntropyAttack",
    "Estimate",
    "GameResult",
    "GapAttack",
    "LabelledData",
    "LiraAttack",
    "LogitsFn",
    "LossAttack",
    "MiaCheckResult",
    "MiaConfig",
    "ModelResult",
    "OnnxModule",
    "OwnerRecipe",
    "ReferenceSet",
    "RmiaAttack",
    "ShadowAttack",
    "ThresholdPolicy",
    "TrainingRecipe",
    "build_attacks",
    "evaluate",
    "forget_set_check",
    "make_attack",
    "membership_audit",
    "read_train_json",
    "resolve_architecture",
    "retrain",
    "roc_curve",
    "run_game",
    "torch_logits_fn",
    "train_reference_models",
    "unlearning_audit",
]
