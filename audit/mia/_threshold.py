"""Threshold attacks: one statistic of the target's output per sample, no reference models.

They are the population baselines (Yeom et al. 2018; Salem et al. 2019; Song & Mittal 2021). A
single global threshold is swept by the ROC, so ``fit`` learns nothing; they overstate privacy
on hard and easy examples alike (Hayes et al. 2025), which is why the reference-model attacks
exist.

``per_class=True`` turns the single threshold into one threshold per class: the statistic is
standardised by the mean and standard deviation of the same statistic over the reference
models' OUT outputs on reference samples *of the candidate's class*, so that one global cut on
the standardised score is the per-class cut ``mean_c + t * sd_c`` (class-dependent thresholds,
Song & Mittal 2021). This option reads reference models.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._reference import ReferenceSet
from audit.mia._signals import (
    LogitsFn,
    logit_confidence,
    max_logit_confidence,
    modified_entropy,
)

__all__ = ["ConfidenceAttack", "EntropyAttack", "LossAttack", "PerClassCalibration"]


class PerClassCalibration:
    """Per-class mean and sd of a statistic over reference models' OUT outputs."""

    def __init__(self, values: NDArray[np.float64], labels: NDArray[np.int64]) -> None:
        self.mean: dict[int, float] = {}
        self.sd: dict[int, float] = {}
        for c in np.unique(labels):
            v = values[labels == c]
            if len(v) >= 2:
                self.mean[int(c)] = float(v.mean())
                self.sd[int(c)] = max(float(v.std(ddof=1)), 1e-12)

    @classmethod
    def fit(cls, reference: ReferenceSet, statistic: Any) -> PerClassCalibration:
        out = ~reference.in_reference
        values = [
            statistic(lg, reference.y)[out[k]]
            for k, lg in enumerate(reference.logits(reference.x, reference.y))
        ]
        labels = [reference.y[out[k]] for k in range(reference.count)]
        return cls(np.concatenate(values), np.concatenate(labels))

    def apply(self, scores: Scores, y: NDArray[np.int64]) -> Scores:
        missing = sorted(set(map(int, np.unique(y))) - set(self.mean))
        if missing:
            raise InputError(
                f"per-class thresholds: no reference outputs for class {missing[0]}; use more "
                "reference data or a single threshold"
            )
        mean = np.array([self.mean[int(c)] for c in y])
        sd = np.array([self.sd[int(c)] for c in y])
        out: Scores = (scores - mean) / sd
        return out


class _StatisticAttack(Attack):
    """One per-sample statistic of the target's logits is the score (optionally standardised
    per class, see the module docstring)."""

    def __init__(self, *, per_class: bool = False) -> None:
        super().__init__()
        self.per_class = bool(per_class)
        self.calibration_: PerClassCalibration | None = None

    @property
    def uses_reference_models(self) -> bool:
        return self.per_class

    def params(self) -> dict[str, Any]:
        return {"per_class": self.per_class}

    @staticmethod
    def statistic(logits: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
        raise NotImplementedError

    def _fit(self, reference: ReferenceSet | None) -> None:
        if self.per_class:
            self.calibration_ = PerClassCalibration.fit(self._reference(), self.statistic)

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        scores = self.statistic(logits, y)
        if self.calibration_ is not None:
            return self.calibration_.apply(scores, y)
        return scores


class LossAttack(_StatisticAttack):
    """LOSS (Yeom et al.): members have lower loss ``-log p_y``. The score is the log-odds
    ``log(p_y / (1 - p_y))``, a strictly increasing function of ``log p_y`` (same ROC) that
    stays distinct when ``p_y`` rounds to 1, where ``log p_y`` would tie at 0."""

    name: ClassVar[str] = "loss"
    statistic = staticmethod(logit_confidence)


class ConfidenceAttack(_StatisticAttack):
    """Prediction confidence (Salem et al.): the highest softmax probability, label-free, scored
    as its log-odds ``log(p_max / (1 - p_max))`` (same ranking, no ties when it rounds to 1).

    (The true-class probability would rank exactly as LOSS does; the label-free maximum is the
    distinct attack.)"""

    name: ClassVar[str] = "confidence"

    @staticmethod
    def statistic(logits: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
        scores: Scores = max_logit_confidence(logits)
        return scores


class EntropyAttack(_StatisticAttack):
    """Modified entropy (Song & Mittal 2021): score ``-Mentr``; it is low for confident correct
    predictions and high for confident wrong ones, unlike plain entropy."""

    name: ClassVar[str] = "entropy"

    @staticmethod
    def statistic(logits: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
        return -modified_entropy(logits, y)
