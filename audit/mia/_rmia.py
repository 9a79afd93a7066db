"""RMIA offline (Zarifzadeh, Liu, Shokri; ICML 2024).

Pairwise likelihood ratio of a candidate ``x`` against population samples ``z``:

``LR(x, z) = (Pr(x|theta) / Pr(x)) / (Pr(z|theta) / Pr(z))``,  score ``= Pr_z[LR(x, z) >= gamma]``

with ``Pr(.|theta)`` the target's softmax probability of the true label. ``Pr(x)`` is the
average over reference models trained with and without ``x``; offline, only OUT models exist
for the candidates, and the paper's linear approximation is used:
``Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2``. The population ``z`` is the auditor's reference
data (non-members of the target); each ``z`` is IN for half of the reference models, and
``Pr(z)`` uses its OUT models with the same approximation, as in the authors' offline code.

``a`` is tuned as the authors do when ``offline_a="auto"``: each reference model in turn plays
the target on the reference data (IN = members), the other models are its references, and the
``a`` of the grid 0, 0.1, ..., 1 with the best mean AUC is kept (needs >= 3 reference models).

Computed in log space; scores are fractions in ``[0, 1]`` (so ties are expected).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._metrics import roc_curve, summarize_roc
from audit.mia._reference import ReferenceSet
from audit.mia._signals import LogitsFn, as_logits, true_class_log_probability

__all__ = ["RmiaAttack", "log_prior", "rmia_scores"]

_A_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def log_prior(
    p_ref: NDArray[np.float64], out_mask: NDArray[np.bool_], a: float
) -> NDArray[np.float64]:
    """``log Pr(x)`` from reference probabilities ``p_ref[k, n]``, OUT models only."""
    counts = out_mask.sum(axis=0)
    if (counts == 0).any():
        raise InputError("RMIA: some samples have no OUT reference model; train more models")
    p_out = np.where(out_mask, p_ref, 0.0).sum(axis=0) / counts
    out: NDArray[np.float64] = np.log(0.5 * ((1.0 + a) * p_out + (1.0 - a)))
    return out


def rmia_scores(
    log_ratio_x: NDArray[np.float64], log_ratio_z: NDArray[np.float64], gamma: float
) -> Scores:
    """Fraction of ``z`` with ``log_ratio_x - log_ratio_z >= log(gamma)``, per ``x``."""
    sorted_z = np.sort(log_ratio_z)
    count = np.searchsorted(sorted_z, log_ratio_x - np.log(gamma), side="right")
    out: Scores = count / len(sorted_z)
    return out


class RmiaAttack(Attack):
    """RMIA offline with ``gamma`` and ``a`` (``"auto"`` tunes ``a`` on the reference models).
    ``population`` caps the number of ``z`` samples (a seeded subsample of the reference data)."""

    name: ClassVar[str] = "rmia"
    needs_reference_models: ClassVar[bool] = True

    def __init__(
        self,
        *,
        offline_a: float | Literal["auto"] = "auto",
        gamma: float = 1.0,
        population: int = 5000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if offline_a != "auto" and not 0.0 <= float(offline_a) <= 1.0:
            raise InputError(f"RMIA offline_a must be in [0, 1] or 'auto', got {offline_a}")
        if not gamma > 0 or population < 1:
            raise InputError("RMIA needs gamma > 0 and a population of at least one sample")
        self.offline_a = offline_a
        self.gamma = gamma
        self.population = population
        self.seed = seed
        self.a_: float = float("nan")

    def params(self) -> dict[str, Any]:
        return {
            "offline_a": self.offline_a,
            "a": self.a_,
            "gamma": self.gamma,
            "population": self.population,
            "seed": self.seed,
        }

    def _before_resample(self, fitted: Attack) -> None:
        if isinstance(fitted, RmiaAttack):
            self.offline_a = fitted.a_  # a replicate keeps the tuned a: only the models vary

    def _fit(self, reference: ReferenceSet | None) -> None:
        reference = self._reference()  # Attack.fit refuses None for this attack
        rng = np.random.default_rng(self.seed)
        has_out = np.flatnonzero((~reference.in_reference).any(axis=0))
        take = np.sort(rng.permutation(has_out)[: min(self.population, len(has_out))])
        if len(take) == 0:
            raise InputError("RMIA needs population samples left out of some reference model")
        self.z_x_ = reference.x[take]
        self.z_y_ = reference.y[take]
        self.z_out_ = ~reference.in_reference[:, take]
        self.z_p_ref_ = np.exp(
            np.stack(
                [
                    true_class_log_probability(lg, self.z_y_)
                    for lg in reference.logits(self.z_x_, self.z_y_)
                ]
            )
        )
        if self.offline_a == "auto":
            self.a_ = self._tune(reference)
        else:
            self.a_ = float(self.offline_a)

    def _tune(self, reference: ReferenceSet) -> float:
        k = reference.count
        if k < 3:
            raise InputError("RMIA offline_a='auto' needs >= 3 reference models; set offline_a")
        log_p = np.stack(
            [
                true_class_log_probability(lg, reference.y)
                for lg in reference.logits(reference.x, reference.y)
            ]
        )
        p = np.exp(log_p)
        inside = reference.in_reference
        best = (-1.0, 0.0)
        for a in _A_GRID:
            aucs = []
            for j in range(k):
                others = np.arange(k) != j
                out = ~inside[others]
                usable = out.any(axis=0)
                ratio = log_p[j, usable] - log_prior(p[others][:, usable], out[:, usable], a)
                member = inside[j, usable]
                if member.all() or not member.any():
                    continue
                fpr, tpr, _ = roc_curve(ratio[member], ratio[~member])
                aucs.append(float(summarize_roc(fpr, tpr, ())["auc"][0]))
            mean = float(np.mean(aucs)) if aucs else -1.0
            if mean > best[0] + 1e-12:
                best = (mean, a)
        return best[1]

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        if target is None:
            raise InputError("RMIA queries the target on population samples: pass the model")
        ratio_x = true_class_log_probability(logits, y) - self._log_prior_x(self._reference(), x, y)
        z_logits = as_logits(target, self.z_x_, self.z_y_)
        ratio_z = true_class_log_probability(z_logits, self.z_y_) - log_prior(
            self.z_p_ref_, self.z_out_, self.a_
        )
        return rmia_scores(ratio_x, ratio_z, self.gamma)

    def _log_prior_x(
        self, ref: ReferenceSet, x: NDArray[np.float32], y: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """``log Pr(x)`` from ``x``'s OUT reference models. In a model-bootstrap replicate
        (``ref.parent``), a candidate left without an OUT model keeps the full set's prior."""
        p_ref = np.exp(np.stack([true_class_log_probability(lg, y) for lg in ref.logits(x, y)]))
        out = ~ref.membership(x, y)
        short = ~out.any(axis=0)
        if ref.parent is not None and short.any():
            prior = self._log_prior_x(ref.parent, x, y)
            prior[~short] = log_prior(p_ref[:, ~short], out[:, ~short], self.a_)
            return prior
        return log_prior(p_ref, out, self.a_)
