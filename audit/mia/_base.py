"""The estimator shape every membership-inference attack follows (scikit-learn style).

``__init__`` stores parameters only; ``fit(reference=...)`` learns from the auditor's reference
models and data and returns the attack; ``score(target, x, y)`` returns one float per sample,
**higher = more member-like**. An attack never sees membership labels of the candidates: the ROC
is computed afterwards from the scores (see :mod:`audit.mia._metrics`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._reference import ReferenceSet
from audit.mia._signals import LogitsFn, as_logits

__all__ = ["Attack", "Scores"]

Scores = NDArray[np.float64]


class Attack(ABC):
    """Base class. Subclasses set :attr:`name`, :attr:`needs_reference_models` and implement
    :meth:`_fit` and :meth:`_score`; the checks common to every attack live here."""

    name: ClassVar[str]
    needs_reference_models: ClassVar[bool] = False

    def __init__(self) -> None:
        self.reference_: ReferenceSet | None = None
        self.fitted_ = False

    @property
    def uses_reference_models(self) -> bool:
        """Whether this configured attack reads reference models (a class property, or an
        option such as per-class thresholds)."""
        return self.needs_reference_models

    def fit(self, *, reference: ReferenceSet | None = None) -> Self:
        """Learn from the auditor's reference models; required for reference-model attacks."""
        if self.uses_reference_models and reference is None:
            raise InputError(f"the {self.name} attack needs reference models (--shadow-models)")
        self.reference_ = reference
        self._fit(reference)
        self.fitted_ = True
        return self

    def score(
        self, target: LogitsFn | NDArray[Any], x: NDArray[np.float32], y: NDArray[np.int64]
    ) -> Scores:
        """One membership score per sample of ``(x, y)`` against ``target`` (a logits function
        or precomputed logits). Higher means more likely a member."""
        if not self.fitted_:
            raise InputError(f"the {self.name} attack must be fitted before scoring")
        if len(x) != len(y) or len(y) == 0:
            raise InputError(f"cannot score {len(x)} samples with {len(y)} labels")
        model = None if isinstance(target, np.ndarray) else target
        scores = self._score(as_logits(target, x, y), x, y, model)
        if scores.shape != (len(y),) or np.isnan(scores).any():
            raise AssertionError(f"{self.name} produced malformed scores")  # a bug, not input
        return scores

    def params(self) -> dict[str, Any]:
        """Parameters and fitted choices to record next to the results."""
        return {}

    def resampled(self, rows: NDArray[np.intp]) -> Attack:
        """A copy fitted on the reference models ``rows`` (a bootstrap draw with repetition):
        one replicate of the reference-model randomness, for confidence intervals. An attack
        that reads no reference models returns itself (its scores do not depend on them)."""
        if not self.uses_reference_models:
            return self
        clone = copy.copy(self)
        clone._before_resample(self)
        return clone.fit(reference=self._reference().resample(rows))

    def _before_resample(self, fitted: Attack) -> None:  # noqa: B027 (optional hook)
        """Override to carry choices the fitted attack made (e.g. a tuned parameter) into a
        replicate, so that the replicate varies only the reference models."""

    def _fit(self, reference: ReferenceSet | None) -> None:  # noqa: B027 (optional hook)
        """Override to learn from ``reference``; threshold attacks learn nothing."""

    @abstractmethod
    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        """Scores from the target's ``logits`` on ``(x, y)``; ``target`` is the model itself when
        the caller passed one (attacks that query other samples, like RMIA, need it)."""

    def _reference(self) -> ReferenceSet:
        if self.reference_ is None:
            raise InputError(f"the {self.name} attack needs reference models")
        return self.reference_
