"""CMIA, the class membership-inference attack of "Unlearning Isn't Forgetting" (Ebrahimpour-
Boroojeny, Wang, Sundaram; ICML 2026; MIA-NN in the preprint): after a class is unlearned, the
probabilities the model still gives to the *neighbouring* classes of that class tell members
(training samples of the class) from non-members (held-out samples of the class).

Our reading, written for candidates whose label is the forgotten class: for each candidate the
target's distribution over the *remaining* classes (softmax without the label's logit) is formed;
the neighbours of the class are the ``neighbours`` remaining classes with the highest mean
probability over all candidates of that label (estimated on the queried population, never from
membership labels); the score is ``-log`` of the probability mass on those neighbours. A model
that memorised the class pushes its members' neighbour logits further down than a held-out
sample's, so members score higher; a model that never saw the class (retraining) gives both the
same distribution, AUC 0.5 up to noise. The attack needs no reference models.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._signals import LogitsFn, log_softmax

__all__ = ["CmiaAttack", "remaining_log_probabilities"]


def remaining_log_probabilities(
    logits: NDArray[np.float64], y: NDArray[np.int64]
) -> NDArray[np.float64]:
    """``log p~_j`` with ``p~`` the softmax over every class except ``y`` (``-inf`` at ``y``)."""
    masked = np.asarray(logits, dtype=np.float64).copy()
    masked[np.arange(len(y)), y] = -np.inf
    return log_softmax(masked)


class CmiaAttack(Attack):
    """CMIA with ``neighbours`` neighbouring classes per forgotten class (at least one, fewer
    than the number of remaining classes)."""

    name: ClassVar[str] = "cmia"

    def __init__(self, *, neighbours: int = 2) -> None:
        super().__init__()
        if neighbours < 1:
            raise InputError(f"CMIA needs at least one neighbouring class, got {neighbours}")
        self.neighbours = neighbours
        self.neighbours_: dict[int, list[int]] = {}

    def params(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "neighbour_classes": dict(self.neighbours_)}

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        classes = logits.shape[1]
        if self.neighbours >= classes - 1:
            raise InputError(
                f"CMIA: {self.neighbours} neighbours leave no other class among {classes - 1}"
            )
        log_p = remaining_log_probabilities(logits, y)
        scores = np.empty(len(y))
        for label in np.unique(y):
            rows = np.flatnonzero(y == label)
            mean = np.exp(log_p[rows]).mean(axis=0)
            mean[label] = -1.0
            near = np.argsort(-mean, kind="stable")[: self.neighbours]
            self.neighbours_[int(label)] = [int(j) for j in near]
            mass = np.logaddexp.reduce(log_p[np.ix_(rows, near)], axis=1)
            scores[rows] = -mass
        out: Scores = np.nan_to_num(scores, nan=0.0, posinf=1e300, neginf=-1e300)
        return out
