"""How well scores separate members from non-members: ROC, AUC, TPR at low FPR, advantage,
two-sided distinguishability, with seeded bootstrap confidence intervals.

Conventions (Carlini et al. 2022): the ROC sweeps every distinct score as a threshold (score >=
threshold means "member"), ties move together; ``TPR@FPR=t`` is the highest TPR among ROC
points with ``FPR <= t``; AUC is the trapezoid area (ties count 1/2, as Mann–Whitney).
Two-sided: an unlearned forget set that looks *less* like members than real non-members is a
signal too, so ``distinguishability = |AUC - 1/2|`` and the reversed direction's TPR@FPR are
reported. The bootstrap resamples members and non-members separately (with replacement) and
gives percentile intervals.

Reference-model variance: a reference-model attack's scores depend on which reference models the
auditor happened to train (on a null split, AUC moved 0.484-0.543 with the reference seed
alone). :func:`evaluate` therefore takes *replicates*: the same candidates scored by the attack
refitted on bootstrap draws of the reference models (with repetition). The interval is then a
two-level bootstrap: replicate ``b`` draws its reference-model set (``b``'s block among the
replicates, in turn) and its resample of members and non-members, so the percentiles include
both sources of variation. Every threshold that reads an interval reads this one. With ``n``
non-members, FPR below ``1/n`` cannot be resolved; the
document records the counts so a reader can tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError

__all__ = ["AttackMetrics", "Estimate", "evaluate", "roc_curve", "summarize_roc"]

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval ``[low, high]``."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class AttackMetrics:
    """Every number the issue asks for, for one attack on one model."""

    members: int
    non_members: int
    auc: Estimate
    distinguishability: Estimate
    advantage: Estimate
    tpr_at_fpr: tuple[tuple[float, Estimate], ...]
    reverse_tpr_at_fpr: tuple[tuple[float, Estimate], ...]
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    bootstrap: int
    confidence: float
    model_bootstrap: int = 0

    def tpr(self, fpr: float, *, reverse: bool = False) -> Estimate:
        table = dict(self.reverse_tpr_at_fpr if reverse else self.tpr_at_fpr)
        if fpr not in table:
            raise InputError(f"TPR at FPR {fpr} was not computed (have {sorted(table)})")
        return table[fpr]

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "non_members": self.non_members,
            "auc": self.auc.to_dict(),
            "distinguishability": self.distinguishability.to_dict(),
            "advantage": self.advantage.to_dict(),
            "tpr_at_fpr": {repr(f): e.to_dict() for f, e in self.tpr_at_fpr},
            "reverse_tpr_at_fpr": {repr(f): e.to_dict() for f, e in self.reverse_tpr_at_fpr},
            "roc": {"fpr": list(self.roc_fpr), "tpr": list(self.roc_tpr)},
            "bootstrap": self.bootstrap,
            "model_bootstrap": self.model_bootstrap,
            "confidence": self.confidence,
        }


def roc_curve(member_scores: F64, non_member_scores: F64) -> tuple[F64, F64, F64]:
    """``(fpr, tpr, thresholds)`` from ``(0, 0)`` at threshold ``+inf`` to ``(1, 1)``."""
    pos, neg = _checked(member_scores, non_member_scores)
    sorted_scores, ends, order = _sorted(np.concatenate([pos, neg]))
    fpr, tpr = _weighted_roc(order, ends, np.ones((1, len(pos))), np.ones((1, len(neg))))
    return fpr[0], tpr[0], np.concatenate([[np.inf], sorted_scores[ends]])


def summarize_roc(fpr: F64, tpr: F64, fprs: Sequence[float]) -> dict[str, Any]:
    """AUC, advantage and TPR at each FPR of one ROC (rows may be stacked: ``[B, G]``)."""
    f, t = np.atleast_2d(fpr), np.atleast_2d(tpr)
    auc = np.sum((f[:, 1:] - f[:, :-1]) * (t[:, 1:] + t[:, :-1]) / 2.0, axis=1)
    return {
        "auc": auc,
        "advantage": np.max(t - f, axis=1),
        "tpr": {a: np.max(np.where(f <= a + 1e-12, t, 0.0), axis=1) for a in fprs},
    }


def evaluate(
    member_scores: F64,
    non_member_scores: F64,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
    bootstrap: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator,
    roc_points: int = 1000,
    replicates: Sequence[tuple[F64, F64]] = (),
) -> AttackMetrics:
    """All metrics with bootstrap intervals; deterministic for a given ``rng`` state.

    ``replicates`` are ``(member_scores, non_member_scores)`` of the same candidates from the
    attack refitted on bootstrap draws of its reference models; when given, bootstrap
    replicate ``b`` uses replicate set ``b * R // bootstrap`` (two-level bootstrap)."""
    pos, neg = _checked(member_scores, non_member_scores)
    if bootstrap < 1 or not 0.0 < confidence < 1.0:
        raise InputError("bootstrap must be >= 1 and confidence in (0, 1)")
    sets = [_checked(a, b) for a, b in replicates] or [(pos, neg)]
    if any(len(a) != len(pos) or len(b) != len(neg) for a, b in sets):
        raise InputError("replicate scores must cover the same members and non-members")
    if len(sets) > bootstrap:
        raise InputError("more reference-model replicates than bootstrap replicates")
    forward = _Sweep(pos, neg)
    backward = _Sweep(-pos, -neg)
    point_f, point_b = forward.metrics(None, None, fprs), backward.metrics(None, None, fprs)
    reps_f: list[dict[str, Any]] = []
    reps_b: list[dict[str, Any]] = []
    chunk = 64
    bounds = [r * bootstrap // len(sets) for r in range(len(sets) + 1)]
    for r, (rp, rn) in enumerate(sets):
        sweep_f = forward if len(sets) == 1 else _Sweep(rp, rn)
        sweep_b = backward if len(sets) == 1 else _Sweep(-rp, -rn)
        for start in range(bounds[r], bounds[r + 1], chunk):
            size = min(chunk, bounds[r + 1] - start)
            wp = np.empty((size, len(pos)))
            wn = np.empty((size, len(neg)))
            for b in range(size):
                wp[b] = np.bincount(rng.integers(0, len(pos), len(pos)), minlength=len(pos))
                wn[b] = np.bincount(rng.integers(0, len(neg), len(neg)), minlength=len(neg))
            reps_f.append(sweep_f.metrics(wp, wn, fprs))
            reps_b.append(sweep_b.metrics(wp, wn, fprs))
    q = (0.5 - confidence / 2.0) * 100.0, (0.5 + confidence / 2.0) * 100.0

    def est(value: float, samples: F64) -> Estimate:
        low, high = np.percentile(samples, q)
        return Estimate(float(value), float(low), float(high))

    def cat(reps: list[dict[str, Any]], key: str, sub: float | None = None) -> F64:
        return np.concatenate([r[key] if sub is None else r[key][sub] for r in reps])

    auc_samples = cat(reps_f, "auc")
    fpr, tpr, _ = roc_curve(pos, neg)
    keep = _thin(fpr, roc_points)
    return AttackMetrics(
        members=len(pos),
        non_members=len(neg),
        auc=est(point_f["auc"][0], auc_samples),
        distinguishability=est(abs(point_f["auc"][0] - 0.5), np.abs(auc_samples - 0.5)),
        advantage=est(point_f["advantage"][0], cat(reps_f, "advantage")),
        tpr_at_fpr=tuple((a, est(point_f["tpr"][a][0], cat(reps_f, "tpr", a))) for a in fprs),
        reverse_tpr_at_fpr=tuple(
            (a, est(point_b["tpr"][a][0], cat(reps_b, "tpr", a))) for a in fprs
        ),
        roc_fpr=tuple(float(v) for v in fpr[keep]),
        roc_tpr=tuple(float(v) for v in tpr[keep]),
        bootstrap=bootstrap,
        confidence=confidence,
        model_bootstrap=len(replicates),
    )


class _Sweep:
    """One sort of the pooled scores, reused by every bootstrap replicate (a replicate is a
    reweighting of the same points, so the distinct thresholds never change)."""

    def __init__(self, pos: F64, neg: F64) -> None:
        self.n_pos, self.n_neg = len(pos), len(neg)
        _, self.ends, self.order = _sorted(np.concatenate([pos, neg]))

    def metrics(self, wp: F64 | None, wn: F64 | None, fprs: Sequence[float]) -> dict[str, Any]:
        wp = np.ones((1, self.n_pos)) if wp is None else wp
        wn = np.ones((1, self.n_neg)) if wn is None else wn
        fpr, tpr = _weighted_roc(self.order, self.ends, wp, wn)
        return summarize_roc(fpr, tpr, fprs)


def _checked(pos: F64, neg: F64) -> tuple[F64, F64]:
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.asarray(neg, dtype=np.float64).ravel()
    if len(p) == 0 or len(n) == 0:
        raise InputError("metrics need at least one member and one non-member score")
    if np.isnan(p).any() or np.isnan(n).any():
        raise InputError("scores contain NaN")
    return p, n


def _sorted(scores: F64) -> tuple[F64, NDArray[np.intp], NDArray[np.intp]]:
    """Scores sorted descending, the last index of each run of equal scores, and for each sorted
    position the index into ``concat(pos, neg)``."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ends = np.concatenate([np.flatnonzero(np.diff(s) != 0), [len(s) - 1]])
    return s, ends, order


def _weighted_roc(
    order: NDArray[np.intp], ends: NDArray[np.intp], wp: F64, wn: F64
) -> tuple[F64, F64]:
    """Stacked ROC curves ``[B, G+1]`` for per-sample weights ``wp`` ``[B, P]``, ``wn``
    ``[B, N]`` (bootstrap counts; all ones for the plain curve)."""
    pos_weights = np.concatenate([wp, np.zeros_like(wn)], axis=1)[:, order]
    neg_weights = np.concatenate([np.zeros_like(wp), wn], axis=1)[:, order]
    tp = np.cumsum(pos_weights, axis=1)[:, ends]
    fp = np.cumsum(neg_weights, axis=1)[:, ends]
    zero = np.zeros((wp.shape[0], 1))
    tpr = np.concatenate([zero, tp / wp.sum(axis=1, keepdims=True)], axis=1)
    fpr = np.concatenate([zero, fp / wn.sum(axis=1, keepdims=True)], axis=1)
    return fpr, tpr


def _thin(fpr: F64, points: int) -> NDArray[np.intp]:
    """Indices of at most about ``points`` ROC points: every point at FPR <= 1% (where the
    low-FPR metrics live) up to half the budget, and an even spread over the rest."""
    n = len(fpr)
    if n <= points:
        return np.arange(n)
    low = np.flatnonzero(fpr <= 0.01)[: points // 2]
    spread = np.linspace(0, n - 1, points - len(low)).round().astype(np.intp)
    return np.unique(np.concatenate([low, spread, [n - 1]]))
