"""Target-label policies (DESIGN.md §3.9): which class a forgotten sample is moved to.

A policy sees the original logits at the forget points and a mask of forbidden classes (the
sample's own label, and for a shared region every label in the group; for class-level unlearning
the forgotten class) and returns one allowed class per point. Registry ``TARGET_POLICIES``:

* ``runner-up`` (default): the highest-scoring allowed class - the smallest change of the model's
  belief, so the patch stays small and neighbouring patches tend to agree on the target;
* ``random``: uniform over allowed classes from the caller's seeded generator (the paper's choice);
* ``least-likely``: the lowest-scoring allowed class (the most conspicuous change; for ablations).

``calibrated`` (:data:`CALIBRATED`) is not a class choice: it patches each forgotten sample to the
logit vector of a model that never saw it (:mod:`prune.calibrate`, :mod:`prune.unlearn`), so it
is listed in :data:`POLICY_NAMES` but has no entry in ``TARGET_POLICIES``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from prune.errors import PatchError

__all__ = [
    "CALIBRATED",
    "POLICY_NAMES",
    "TARGET_POLICIES",
    "TargetPolicy",
    "choose_targets",
    "default_policy",
]

TargetPolicy = Callable[
    [NDArray[np.float64], NDArray[np.bool_], np.random.Generator], NDArray[np.int64]
]


def _runner_up(
    logits: NDArray[np.float64], forbidden: NDArray[np.bool_], rng: np.random.Generator
) -> NDArray[np.int64]:
    return np.asarray(np.where(forbidden, -np.inf, logits).argmax(axis=1), dtype=np.int64)


def _least_likely(
    logits: NDArray[np.float64], forbidden: NDArray[np.bool_], rng: np.random.Generator
) -> NDArray[np.int64]:
    return np.asarray(np.where(forbidden, np.inf, logits).argmin(axis=1), dtype=np.int64)


def _random(
    logits: NDArray[np.float64], forbidden: NDArray[np.bool_], rng: np.random.Generator
) -> NDArray[np.int64]:
    scores = np.where(forbidden, -np.inf, rng.random(logits.shape))
    return np.asarray(scores.argmax(axis=1), dtype=np.int64)


TARGET_POLICIES: dict[str, TargetPolicy] = {
    "runner-up": _runner_up,
    "random": _random,
    "least-likely": _least_likely,
}

CALIBRATED = "calibrated"
POLICY_NAMES: tuple[str, ...] = (*TARGET_POLICIES, CALIBRATED)


def default_policy(*, prepared: bool) -> str:
    """The default target policy, chosen by the measurements (docs/BENCHMARKS.md, "Calibrated
    targets"): ``calibrated`` whenever prepared reference models are given - its forgotten
    samples are as indistinguishable from non-members as a retrained model's, where
    ``runner-up``'s stand out as deleted (RMIA/LiRA AUC near 0) - else ``runner-up``, the paper's
    policy, which needs no preparation and no held-out data (class deletion, quick runs)."""
    return CALIBRATED if prepared else "runner-up"


def choose_targets(
    policy: str,
    logits: NDArray[np.float64],
    forbidden: NDArray[np.bool_],
    *,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """One target per row of ``logits`` ``[N, O]``, never a class where ``forbidden`` is set."""
    try:
        fn = TARGET_POLICIES[policy]
    except KeyError:
        raise PatchError(
            f"unknown target policy {policy!r} (choose {', '.join(TARGET_POLICIES)})"
        ) from None
    if forbidden.shape != logits.shape:
        raise ValueError("forbidden mask must have the shape of the logits")
    if forbidden.all(axis=1).any():
        raise PatchError("a forget point has no allowed target class (every class is forbidden)")
    targets = fn(logits, forbidden, rng)
    if forbidden[np.arange(len(targets)), targets].any():
        raise AssertionError(f"target policy {policy!r} chose a forbidden class")
    return targets
