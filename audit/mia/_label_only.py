"""Label-only attacks, for targets that answer a query with a label and nothing else.

* ``gap`` (Yeom et al. 2018; the "gap attack" of Choquette-Choo et al. 2021): member iff the
  label is predicted correctly. Score 1 or 0, so the ROC has a single inner point (TPR and FPR
  of "correct"); its advantage is the train-test accuracy gap. **Cost: 1 query per sample.**
* ``boundary`` (decision-boundary distance, Choquette-Choo et al. 2021, their random-direction
  variant of the boundary search): members tend to lie further from the decision boundary. For
  each sample, ``directions`` random unit directions in input space are searched by bisection
  for the smallest radius (up to ``max_radius``) at which the predicted label changes; the
  score is the smallest such radius if the sample is classified correctly, its negative
  otherwise (a confidently wrong sample is the least member-like). **Cost: 1 + directions *
  (1 + steps) label queries per sample** (1 + 8 * 11 = 89 by default), recorded in ``params``.

Both read only ``argmax`` of what the target returns. The directions of a sample come from a
generator seeded by ``seed`` and the sample's own bytes, and the target is queried in fixed-size
chunks, so a sample's score does not depend on its companions. ``max_radius`` defaults to
``sqrt(d)`` (the diagonal of the unit cube: features scaled to ``[0, 1]``); set it for other
scales. Not done: HopSkipJump's gradient-estimating search (tighter distances, ~10^3-10^4
queries per sample) and the data-augmentation variant.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._signals import LogitsFn, query

__all__ = ["BoundaryAttack", "GapAttack"]


class GapAttack(Attack):
    """Member iff predicted correctly (1 label query per sample)."""

    name: ClassVar[str] = "gap"

    def params(self) -> dict[str, Any]:
        return {"queries_per_sample": 1, "label_only": True}

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        scores: Scores = (logits.argmax(axis=1) == y).astype(np.float64)
        return scores


class BoundaryAttack(Attack):
    """Distance to the decision boundary along random directions, found with label queries."""

    name: ClassVar[str] = "boundary"

    def __init__(
        self,
        *,
        directions: int = 8,
        steps: int = 10,
        max_radius: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if directions < 1 or steps < 1 or (max_radius is not None and not max_radius > 0):
            raise InputError("the boundary attack needs directions >= 1, steps >= 1, radius > 0")
        self.directions = directions
        self.steps = steps
        self.max_radius = max_radius
        self.seed = seed

    @property
    def queries_per_sample(self) -> int:
        return 1 + self.directions * (1 + self.steps)

    def params(self) -> dict[str, Any]:
        return {
            "directions": self.directions,
            "steps": self.steps,
            "max_radius": self.max_radius,
            "seed": self.seed,
            "queries_per_sample": self.queries_per_sample,
            "label_only": True,
        }

    def _directions(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """``[N, D, *shape]`` unit directions, each sample's from its own seeded generator."""
        out = np.empty((len(x), self.directions, *x.shape[1:]), dtype=np.float32)
        for n, row in enumerate(np.ascontiguousarray(x, dtype=np.float32)):
            digest = hashlib.blake2b(row.tobytes(), digest_size=8).digest()
            rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
            d = rng.standard_normal((self.directions, row.size))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            out[n] = d.reshape(self.directions, *x.shape[1:])
        return out

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        if target is None:
            raise InputError("the boundary attack queries the target: pass the model")
        label = logits.argmax(axis=1)
        dims = x.shape[1:]
        radius_cap = self.max_radius or float(np.sqrt(np.prod(dims)))
        dirs = self._directions(x)  # [N, D, ...]
        base = np.repeat(x[:, None], self.directions, axis=1)
        want = np.repeat(label[:, None], self.directions, axis=1).ravel()

        def changed(radius: NDArray[np.float64]) -> NDArray[np.bool_]:
            shift = radius.reshape(len(x), self.directions, *([1] * len(dims)))
            points = (base + shift.astype(np.float32) * dirs).reshape(-1, *dims)
            got = np.asarray(query(target, points)).argmax(axis=1)
            flipped: NDArray[np.bool_] = got != want
            return flipped

        lo = np.zeros(len(x) * self.directions)
        hi = np.full(len(x) * self.directions, radius_cap)
        reached = changed(hi)
        for _ in range(self.steps):
            mid = (lo + hi) / 2.0
            flip = changed(mid)
            hi = np.where(flip, mid, hi)
            lo = np.where(flip, lo, mid)
        dist = np.where(reached, hi, radius_cap).reshape(len(x), self.directions).min(axis=1)
        scores: Scores = np.where(label == y, dist, -dist)
        return scores
