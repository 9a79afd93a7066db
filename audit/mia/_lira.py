"""LiRA, the likelihood-ratio attack (Carlini et al., S&P 2022).

Signal: the logit-scaled confidence ``phi(x) = log(p_y / (1 - p_y))`` of a model on ``(x, y)``,
which is close to Gaussian over the randomness of training. For every candidate, the reference
models trained *without* it (OUT) give ``N(mu_out, sigma_out^2)``; those trained *with* it (IN,
online only) give ``N(mu_in, sigma_in^2)``.

* offline: one-sided test, score ``log Pr[Z <= phi_target]`` with ``Z ~ N(mu_out, sigma_out^2)``;
* online: score ``log N(phi; mu_in, sigma_in) - log N(phi; mu_out, sigma_out)``.

Variance ``per-example`` uses each candidate's own spread (needs >= 2 models per side, is noisy
with few models); ``fixed`` is one variance per side (Carlini et al. recommend a global variance
below ~64 reference models), estimated at **fit time from the reference models on the auditor's
reference data alone**: each reference sample is IN for half of the models and OUT for the
others, and the pooled within-sample variance ``sum (phi - mu_n)^2 / sum (count_n - 1)`` over
those samples is the variance of the side (online, when capping the models' training sets at
the target's size left no reference sample IN for two models, the IN variance comes from the
candidate pool the models were trained with, also fixed at training). It never looks at the
samples of a ``score()`` call, so a sample's score is the same whether it is scored alone or
with any number of companions (pooling over the candidates of one ``score()`` call made a
small forget set's scores depend on its size).

Not done: the paper's query augmentations (flips/shifts), which do not apply to flat inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._reference import ReferenceSet
from audit.mia._signals import LogitsFn, logit_confidence

__all__ = ["LiraAttack", "gaussian_fit"]

Variant = Literal["offline", "online"]
Variance = Literal["fixed", "per-example"]
_MIN_SD = 1e-6


def side_means(
    phi: NDArray[np.float64], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Per-sample mean and (biased) standard deviation of ``phi[k, n]`` over the models ``k``
    with ``mask[k, n]``, and the count; NaN where the count is 0."""
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(mask, phi, 0.0).sum(axis=0) / counts
        sd = np.sqrt(np.where(mask, (phi - mu) ** 2, 0.0).sum(axis=0) / counts)
    return mu, sd, counts


def pooled_sd(phi: NDArray[np.float64], mask: NDArray[np.bool_]) -> float:
    """The pooled within-sample standard deviation ``sqrt(sum (phi - mu_n)^2 / sum (c_n - 1))``
    over the samples with ``c_n >= 2`` models on the side; raises when there are none."""
    mu, _, counts = side_means(phi, mask)
    usable = counts >= 2
    dof = int((counts[usable] - 1).sum())
    if dof == 0:
        raise InputError(
            "the fixed variance needs reference samples with >= 2 reference models on each side "
            "(train >= 3 reference models offline, >= 4 online)"
        )
    sq = np.where(mask[:, usable], (phi[:, usable] - mu[usable]) ** 2, 0.0).sum()
    return max(float(np.sqrt(sq / dof)), _MIN_SD)


def gaussian_fit(
    phi: NDArray[np.float64],
    mask: NDArray[np.bool_],
    *,
    variance: Variance,
    fixed_sd: float | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-candidate mean and standard deviation of ``phi[k, n]`` over the models ``k`` with
    ``mask[k, n]``: the candidate's own spread (``per-example``) or ``fixed_sd``. Raises when
    some candidate has no such model, or too few to estimate its variance."""
    mu, sd, counts = side_means(phi, mask)
    if (counts == 0).any():
        raise InputError(
            "some candidates have no reference model on this side (IN/OUT); train more "
            "reference models (offline >= 3, online >= 4)"
        )
    if variance == "per-example":
        if (counts < 2).any():
            raise InputError(
                "per-example variance needs >= 2 reference models per side and candidate; "
                "train more reference models or use the fixed variance"
            )
    elif variance == "fixed":
        if fixed_sd is None:
            raise InputError("the fixed variance is estimated when the attack is fitted")
        sd = np.full(mu.shape, fixed_sd)
    else:
        raise InputError(f"unknown variance {variance!r} (choose fixed or per-example)")
    return mu, np.maximum(sd, _MIN_SD)


class LiraAttack(Attack):
    """LiRA online or offline, with fixed or per-example variance."""

    name: ClassVar[str] = "lira"
    needs_reference_models: ClassVar[bool] = True

    def __init__(self, *, variant: Variant = "offline", variance: Variance = "fixed") -> None:
        super().__init__()
        if variant not in ("offline", "online"):
            raise InputError(f"unknown LiRA variant {variant!r} (choose offline or online)")
        if variance not in ("fixed", "per-example"):
            raise InputError(f"unknown variance {variance!r} (choose fixed or per-example)")
        self.variant = variant
        self.variance = variance

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "variance": self.variance}
        if self.variance == "fixed" and self.fitted_:
            out["sd_out"] = self.sd_out_
            if self.variant == "online":
                out["sd_in"] = self.sd_in_
        return out

    def _fit(self, reference: ReferenceSet | None) -> None:
        ref = self._reference()
        if self.variant == "online" and not ref.online:
            raise InputError(
                "online LiRA needs reference models trained on halves of the candidates "
                "(train them with the candidates, --lira-variant online)"
            )
        self.sd_out_ = self.sd_in_ = float("nan")
        if self.variance == "fixed":
            phi = np.stack([logit_confidence(lg, ref.y) for lg in ref.logits(ref.x, ref.y)])
            self.sd_out_ = pooled_sd(phi, ~ref.in_reference)
            if self.variant == "online":
                self.sd_in_ = self._online_in_sd(ref, phi)

    @staticmethod
    def _online_in_sd(ref: ReferenceSet, phi: NDArray[np.float64]) -> float:
        """The IN variance from the reference data; when capping the models' training sets at
        the target's size left no reference sample IN for two models, from the candidate pool
        the models were trained with (fixed when they were trained, whatever is scored)."""
        if (ref.in_reference.sum(axis=0) >= 2).any():
            return pooled_sd(phi, ref.in_reference)
        cx, cy = ref.candidates_x, ref.candidates_y
        pool = np.stack([logit_confidence(lg, cy) for lg in ref.logits(cx, cy)])
        return pooled_sd(pool, ref.in_candidates)

    def _side(
        self, ref: ReferenceSet, x: NDArray[np.float32], y: NDArray[np.int64], inside: bool
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Mean and sd of every candidate's IN (``inside``) or OUT reference signals. In a
        model-bootstrap replicate (``ref.parent``), a candidate left without enough models on
        the side keeps the full set's estimate for it."""
        phi = np.stack([logit_confidence(lg, y) for lg in ref.logits(x, y)])
        mask = ref.membership(x, y)
        mask = mask if inside else ~mask
        fixed = self.sd_in_ if inside else self.sd_out_
        need = 2 if self.variance == "per-example" else 1
        short = mask.sum(axis=0) < need
        if ref.parent is not None and short.any():
            mu, sd = self._side(ref.parent, x, y, inside)
            keep = ~short
            mu_k, sd_k = gaussian_fit(
                phi[:, keep], mask[:, keep], variance=self.variance, fixed_sd=fixed
            )
            mu[keep], sd[keep] = mu_k, sd_k
            return mu, sd
        return gaussian_fit(phi, mask, variance=self.variance, fixed_sd=fixed)

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        # imported here, not with the module: every worker that trains reference models imports
        # this package, and scipy.stats was ~40% of its import time (2-5 s CPU per process)
        from scipy.stats import norm

        ref = self._reference()
        phi = logit_confidence(logits, y)
        mu_out, sd_out = self._side(ref, x, y, inside=False)
        if self.variant == "offline":
            out: Scores = norm.logcdf(phi, loc=mu_out, scale=sd_out)
            return out
        base = ref.parent if ref.parent is not None else ref
        if not base.membership(x, y).any(axis=0).all():
            raise InputError(
                "online LiRA can only score the candidates its reference models were trained with"
            )
        mu_in, sd_in = self._side(ref, x, y, inside=True)
        ratio: Scores = norm.logpdf(phi, loc=mu_in, scale=sd_in) - norm.logpdf(
            phi, loc=mu_out, scale=sd_out
        )
        return ratio
