"""Calibrated targets: for each forgotten sample, the logit vector a model that never saw it would
output, on the original model's logit scale.

Two sources (the summary and the certificate's method say which one was used):

* ``cross-fitted`` (with ``prune prepare``): the logits of the fold model that left the sample
  out (:mod:`prune.calibrate._prepare`). A fold model is trained on ``(K-1)/K`` of the data, so
  its logits are mapped onto the original model's scale: ``calibration="temperature"`` fits one
  scale ``a_k`` per fold by least squares between row-centred logits of the original and of fold
  model ``k`` on the held-out set (data neither saw), ``t = a_k * centre(z_k) + mean(f(x))``;
  ``"none"`` keeps ``centre(z_k) + mean(f(x))``. Softmax ignores the per-row mean, so only the
  scale matters for the output distribution; the mean is the original's to keep the patch small.
  ``"retained"`` (an option, not the default) aims at the model the request stands for,
  trained on the retained fraction ``r`` of the data rather than all of it: the logit scale is
  taken as a power of the training fraction, fitted through the fold models' ``(K-1)/K`` (scale
  ``1/a_k`` relative to the original) and the original's 1, giving
  ``a_k^(1 - ln r / ln((K-1)/K))`` (``a_k`` itself when ``r = 1``, 1 at ``r = (K-1)/K``).
  Measured on digits, 500 of 1,257 rows deleted, seed 0: KL to the retrained model on the
  forget set 0.056 -> 0.037 (3x floor 0.054), but the extrapolated targets are too
  unconfident for LiRA (AUC 0.40 [0.36, 0.44] against retraining's [0.50, 0.58]), so
  ``temperature`` stays the default (docs/BENCHMARKS.md, "Calibrated targets").
* ``class-conditional`` (no preparation; needs ``--test``): the sample keeps the original's
  logits except the true class, whose margin over the runner-up is moved from its quantile among
  the training members of its class to the same quantile of the held-out (non-member) margins of
  that class. Hard samples stay hard, easy ones easy; only the member/non-member gap is removed.
  Weaker than cross-fitting: it sees no per-sample evidence of how an *out* model behaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from prune.calibrate._prepare import PreparedReferences
from prune.errors import DataError

__all__ = [
    "CALIBRATIONS",
    "CalibratedTargets",
    "Calibration",
    "class_conditional_targets",
    "cross_fitted_targets",
    "true_class_margins",
]

Calibration = Literal["retained", "temperature", "none"]
CALIBRATIONS: tuple[Calibration, ...] = ("retained", "temperature", "none")
Source = Literal["cross-fitted", "class-conditional"]


@dataclass(frozen=True, eq=False)
class CalibratedTargets:
    """Target logits ``[M, O]`` (float64) per forget point and where they come from."""

    logits: NDArray[np.float64]
    source: Source
    calibration: str
    scales: tuple[float, ...] = ()


def true_class_margins(z: NDArray[np.floating], y: NDArray[np.int64]) -> NDArray[np.float64]:
    """``z_y - max_{j != y} z_j`` per row (negative when the row is misclassified)."""
    v = np.asarray(z, dtype=np.float64)
    rows = np.arange(len(v))
    other = v.copy()
    other[rows, y] = -np.inf
    return np.asarray(v[rows, y] - other.max(axis=1))


def _centre(z: NDArray[np.floating]) -> NDArray[np.float64]:
    v = np.asarray(z, dtype=np.float64)
    return np.asarray(v - v.mean(axis=-1, keepdims=True))


def cross_fitted_targets(
    prepared: PreparedReferences,
    rows: NDArray[np.int64],
    original_logits: NDArray[np.float64],
    *,
    calibration: Calibration = "temperature",
    retained: float = 1.0,
) -> CalibratedTargets:
    """Targets for training ``rows`` whose original logits are ``original_logits [M, O]``.
    ``retained``: the fraction of the training set the model keeps after this request (the
    training fraction of the model the targets stand for; ``retained`` calibration only)."""
    if calibration not in CALIBRATIONS:
        raise DataError(f"unknown calibration {calibration!r} (choose {', '.join(CALIBRATIONS)})")
    z = _centre(prepared.out_logits[rows])
    folds = prepared.fold[rows]
    scales = np.ones(prepared.folds)
    if not 0.0 < retained <= 1.0:
        raise DataError(f"the retained fraction must be in (0, 1], got {retained}")
    if calibration != "none":
        if prepared.heldout_original is None or prepared.heldout_folds is None:
            raise DataError(
                "temperature calibration needs held-out logits: run prune prepare with --test"
            )
        zo = _centre(prepared.heldout_original)
        for k in range(prepared.folds):
            zk = _centre(prepared.heldout_folds[k])
            scales[k] = float((zo * zk).sum() / max((zk * zk).sum(), 1e-12))
        if calibration == "retained" and prepared.folds > 1:
            # power law in the training fraction through the fold models' (K-1)/K (scale
            # 1/a_k relative to the original) and the original's 1: the scale of a model
            # trained on ``retained``, applied to fold logits, is a_k^(1 - ln r / ln f)
            fold_fraction = (prepared.folds - 1) / prepared.folds
            scales = scales ** (1.0 - np.log(retained) / np.log(fold_fraction))
    z = z * scales[folds][:, None]
    mean = np.asarray(original_logits, dtype=np.float64).mean(axis=1, keepdims=True)
    return CalibratedTargets(
        logits=np.asarray(z + mean),
        source="cross-fitted",
        calibration=calibration,
        scales=tuple(float(s) for s in scales),
    )


def class_conditional_targets(
    forget_logits: NDArray[np.float64],
    forget_y: NDArray[np.int64],
    *,
    member_logits: NDArray[np.floating],
    member_y: NDArray[np.int64],
    heldout_logits: NDArray[np.floating],
    heldout_y: NDArray[np.int64],
) -> CalibratedTargets:
    """Quantile-matched true-class margins (see the module docstring)."""
    target = np.asarray(forget_logits, dtype=np.float64).copy()
    m_forget = true_class_margins(target, forget_y)
    m_member = true_class_margins(member_logits, member_y)
    m_held = true_class_margins(heldout_logits, heldout_y)
    rows = np.arange(len(target))
    for c in np.unique(forget_y):
        sel = forget_y == c
        members, held = np.sort(m_member[member_y == c]), np.sort(m_held[heldout_y == c])
        if len(members) == 0 or len(held) == 0:
            raise DataError(
                f"class {int(c)} has no training or held-out samples to calibrate against"
            )
        lo = np.searchsorted(members, m_forget[sel], side="left")
        hi = np.searchsorted(members, m_forget[sel], side="right")
        q = np.clip((lo + hi) / (2.0 * len(members)), 0.0, 1.0)
        wanted = np.quantile(held, q)
        others = target[sel].copy()
        others[:, int(c)] = -np.inf
        target[rows[sel], int(c)] = others.max(axis=1) + wanted
    return CalibratedTargets(logits=target, source="class-conditional", calibration="quantile")
