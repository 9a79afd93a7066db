"""The shadow-model attack (Shokri, Stronati, Song, Shmatikov; S&P 2017).

Each reference model is a shadow of the target: its outputs on the reference samples it trained
on are labelled IN, on the others OUT. One attack classifier per true class learns IN vs OUT from
the prediction vector (here the log-softmax vector); a class without both kinds of examples falls
back to one classifier over all classes. The attack model is scikit-learn's
``HistGradientBoostingClassifier`` (Shokri et al. used a small neural network; the method allows
any binary classifier). Score: the attack classifier's probability of IN.

Threat assumption: shadows are trained like the target (architecture, recipe) on data from the
same distribution; a mismatch weakens the attack, it never makes it report leakage that is not
there (the ROC is measured on true members and non-members).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._reference import ReferenceSet
from audit.mia._signals import LogitsFn, log_softmax

__all__ = ["ShadowAttack"]


def _one_thread() -> Any:
    """One OpenMP thread for the boosting trees: with torch's OpenMP runtime loaded in the same
    process, their tiny parallel loops spin against it (measured 15x slower on 2 cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


class ShadowAttack(Attack):
    """Shokri et al.'s per-class attack models trained on the shadows' IN/OUT outputs."""

    name: ClassVar[str] = "shadow"
    needs_reference_models: ClassVar[bool] = True

    def __init__(self, *, seed: int = 0, max_iter: int = 100) -> None:
        super().__init__()
        if max_iter < 1:
            raise InputError("the shadow attack needs max_iter >= 1")
        self.seed = seed
        self.max_iter = max_iter
        self.per_class_: dict[int, Any] = {}
        self.fallback_: Any = None

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "max_iter": self.max_iter, "per_class": len(self.per_class_)}

    def _fit(self, reference: ReferenceSet | None) -> None:
        reference = self._reference()  # Attack.fit refuses None for this attack
        logits = reference.logits(reference.x, reference.y)  # [K, n, C]
        features = np.concatenate([log_softmax(lg) for lg in logits])
        labels = np.tile(reference.y, reference.count)
        inside = reference.in_reference.reshape(-1)
        if inside.all() or not inside.any():
            raise InputError("the shadow attack needs both IN and OUT shadow outputs")
        with _one_thread():
            self.fallback_ = self._classifier().fit(features, inside)
            self.per_class_ = {}
            for c in np.unique(labels):
                rows = labels == c
                if 0 < inside[rows].sum() < rows.sum():
                    self.per_class_[int(c)] = self._classifier().fit(features[rows], inside[rows])

    def _classifier(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=self.max_iter, random_state=self.seed)

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        features = log_softmax(logits)
        scores = np.empty(len(y))
        with _one_thread():
            for c in np.unique(y):
                rows = y == c
                model = self.per_class_.get(int(c), self.fallback_)
                scores[rows] = model.predict_proba(features[rows])[:, 1]
        return scores
