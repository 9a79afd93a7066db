"""LiRA, the likelihood-ratio attack (Carlini et al., S&P 2022).

Signal: the logit-scaled confidence ``phi(x) = log(p_y / (1 - p_y))`` of a model on ``(x, y)``,
which is close to Gaussian over the randomness of training. For every candidate, the reference
models trained *without* it (OUT) give ``N(mu_out, sigma_out^2)``; those trained *with* it (IN,
online only) give ``N(mu_in, sigma_in^2)``.

* offline: one-sided test, score ``log Pr[Z <= phi_target]`` with ``Z ~ N(mu_out, sigma_out^2)``;
* online: score ``log N(phi; mu_in, sigma_in) - log N(phi; mu_out, sigma_out)``.

Variance ``per-example`` uses each candidate's own spread (needs >= 2 models per side, is noisy
with few models); ``fixed`` pools the within-candidate variance over all candidates (Carlini et
al. recommend a global variance below ~64 reference models). The pooled estimate here is the
within-candidate one, ``sum (phi - mu_n)^2 / sum (count_n - 1)``, not the spread of all values,
which would also count how candidates differ from each other.

Not done: the paper's query augmentations (flips/shifts), which do not apply to flat inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from audit.errors import InputError
from audit.mia._base import Attack, Scores
from audit.mia._reference import ReferenceSet
from audit.mia._signals import LogitsFn, logit_confidence

__all__ = ["LiraAttack", "gaussian_fit"]

Variant = Literal["offline", "online"]
Variance = Literal["fixed", "per-example"]
_MIN_SD = 1e-6


def gaussian_fit(
    phi: NDArray[np.float64], mask: NDArray[np.bool_], *, variance: Variance
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-candidate mean and standard deviation of ``phi[k, n]`` over the models ``k`` with
    ``mask[k, n]``. Raises when some candidate has no such model, or too few to estimate the
    variance."""
    counts = mask.sum(axis=0)
    if (counts == 0).any():
        raise InputError(
            "some candidates have no reference model on this side (IN/OUT); train more "
            "reference models (offline >= 2, online >= 4)"
        )
    mu = np.where(mask, phi, 0.0).sum(axis=0) / counts
    sq = np.where(mask, (phi - mu) ** 2, 0.0)
    if variance == "per-example":
        if (counts < 2).any():
            raise InputError(
                "per-example variance needs >= 2 reference models per side and candidate; "
                "train more reference models or use the fixed variance"
            )
        sd = np.sqrt(sq.sum(axis=0) / counts)
    elif variance == "fixed":
        dof = int((counts - 1).sum())
        if dof == 0:
            raise InputError(
                "a variance needs >= 2 reference models on each side; train more reference models"
            )
        sd = np.full(mu.shape, np.sqrt(sq.sum() / dof))
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
        return {"variant": self.variant, "variance": self.variance}

    def _fit(self, reference: ReferenceSet | None) -> None:
        if self.variant == "online" and reference is not None and not reference.online:
            raise InputError(
                "online LiRA needs reference models trained on halves of the candidates "
                "(train them with the candidates, --lira-variant online)"
            )

    def _score(
        self,
        logits: NDArray[np.float64],
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        target: LogitsFn | None,
    ) -> Scores:
        ref = self._reference()
        phi = logit_confidence(logits, y)
        phi_ref = np.stack([logit_confidence(lg, y) for lg in ref.logits(x, y)])
        member = ref.membership(x, y)
        mu_out, sd_out = gaussian_fit(phi_ref, ~member, variance=self.variance)
        if self.variant == "offline":
            out: Scores = norm.logcdf(phi, loc=mu_out, scale=sd_out)
            return out
        if not member.any(axis=0).all():
            raise InputError(
                "online LiRA can only score the candidates its reference models were trained with"
            )
        mu_in, sd_in = gaussian_fit(phi_ref, member, variance=self.variance)
        ratio: Scores = norm.logpdf(phi, loc=mu_in, scale=sd_in) - norm.logpdf(
            phi, loc=mu_out, scale=sd_out
        )
        return ratio
