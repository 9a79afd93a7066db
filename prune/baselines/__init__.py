"""Baseline unlearning methods (owner side, PyTorch), for comparison with PRUNE.

``UNLEARNING_METHODS[name]`` is the method's class; its fields are its hyperparameters (keyword
only, with the defaults the benchmark study uses). Every method is used the same way::

    method = UNLEARNING_METHODS["finetune"](epochs=2)
    model = method.prepare(x_train, y_train, recipe=recipe)          # training time
    unlearned = method.unlearn(model, x_train, y_train, forget_idx,  # deletion request
                               generator=torch.Generator().manual_seed(0))

``retrain`` also needs ``recipe=``. ``x_train`` has the model's input shape (as in
``train.npz``); ``forget_idx`` are row indices into it.
"""

from __future__ import annotations

from prune.baselines._amnesiac import Amnesiac, AmnesiacModel, UpdateLog
from prune.baselines._base import BaselineError, UnlearningMethod, check_forget, retain_indices
from prune.baselines._gradient import FineTune, NegGrad, NegGradPlus, RandomLabels
from prune.baselines._recipe import StepObserver, TrainRecipe, fit, predict_logits, recipe_for
from prune.baselines._retrain import Retrain
from prune.baselines._sisa import Sisa, SisaEnsemble

__all__ = [
    "UNLEARNING_METHODS",
    "Amnesiac",
    "AmnesiacModel",
    "BaselineError",
    "FineTune",
    "NegGrad",
    "NegGradPlus",
    "RandomLabels",
    "Retrain",
    "Sisa",
    "SisaEnsemble",
    "StepObserver",
    "TrainRecipe",
    "UnlearningMethod",
    "UpdateLog",
    "check_forget",
    "fit",
    "predict_logits",
    "recipe_for",
    "retain_indices",
]

UNLEARNING_METHODS: dict[str, type[UnlearningMethod]] = {
    cls.name: cls for cls in (Retrain, FineTune, NegGrad, NegGradPlus, RandomLabels, Amnesiac, Sisa)
}
