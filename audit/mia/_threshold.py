"""Threshold attacks: one statistic of the target's output per sample, no reference models.

They are the population baselines (Yeom et al. 2018; Salem et al. 2019; Song & Mittal 2021). A
single global threshold is swept by the ROC, so ``fit`` learns nothing; they overstate privacy
on hard and easy examples alike (Hayes et al. 2025), which is why the reference-model attacks
exist.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from audit.mia._base import Attack, Scores
from audit.mia._signals import (
    LogitsFn,
    max_probability,
    modified_entropy,
    true_class_log_probability,
)

__all__ = ["ConfidenceAttack", "EntropyAttack", "LossAttack"]


class _StatisticAttack(Attack):
    """One per-sample statistic of the target's logits is the score."""

    @staticmethod
    def statistic(logits: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
        raise NotImplementedError

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        return self.statistic(logits, y)


class LossAttack(_StatisticAttack):
    """LOSS (Yeom et al.): score ``-CE = log p_y``; members have lower loss."""

    name: ClassVar[str] = "loss"
    statistic = staticmethod(true_class_log_probability)


class ConfidenceAttack(_StatisticAttack):
    """Prediction confidence (Salem et al.): the highest softmax probability, label-free.

    (The true-class probability would rank exactly as LOSS does; the label-free maximum is the
    distinct attack.)"""

    name: ClassVar[str] = "confidence"

    @staticmethod
    def statistic(logits: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
        return max_probability(logits)


class EntropyAttack(_StatisticAttack):
    """Modified entropy (Song & Mittal 2021): score ``-Mentr``; it is low for confident correct
    predictions and high for confident wrong ones, unlike plain entropy."""

    name: ClassVar[str] = "entropy"

    @staticmethod
    def statistic(logits: NDArray[np.float64], y: NDArray[np.int64]) -> Scores:
        return -modified_entropy(logits, y)
