"""Calibrated unlearning targets (issue 13): forgotten samples should look like samples the model
never saw, not like deleted ones.

:func:`prepare` trains cross-fitted reference models once per model (``prune prepare``);
:func:`cross_fitted_targets` / :func:`class_conditional_targets` give each forget sample the
logits of a model that did not see it, on the original model's scale; :func:`calibrated_patches`
builds the affine patch that outputs them at the sample with a flat, certified true-class margin
over the sample's linear region."""

from __future__ import annotations

from prune.calibrate._patch import (
    DEFAULT_TOLERANCE,
    CalibratedPatches,
    calibrated_patches,
    rivals,
)
from prune.calibrate._prepare import (
    DEFAULT_FOLDS,
    PREPARED_TYPE,
    PREPARED_VERSION,
    PreparedReferences,
    load_prepared,
    prepare,
    recipe_from_train_json,
    save_prepared,
)
from prune.calibrate._targets import (
    CALIBRATIONS,
    CalibratedTargets,
    Calibration,
    class_conditional_targets,
    cross_fitted_targets,
    true_class_margins,
)

__all__ = [
    "CALIBRATIONS",
    "DEFAULT_FOLDS",
    "DEFAULT_TOLERANCE",
    "PREPARED_TYPE",
    "PREPARED_VERSION",
    "CalibratedPatches",
    "CalibratedTargets",
    "Calibration",
    "PreparedReferences",
    "calibrated_patches",
    "class_conditional_targets",
    "cross_fitted_targets",
    "load_prepared",
    "prepare",
    "recipe_from_train_json",
    "rivals",
    "save_prepared",
    "true_class_margins",
]
