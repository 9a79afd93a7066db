"""Per-example signals computed from logits, in float64 and numerically stable.

Every attack reads a model only through its logits ``[N, C]`` and the true labels ``[N]``. The
signals here never exponentiate a large logit and never form ``1 - p`` from a rounded ``p``: a
confidently-correct overfit model (``p_y`` within 1e-17 of 1, where ``p_y`` itself rounds to 1
in float64) still gives finite, *distinct*, correctly ordered values. The ranking signals are
logit-scaled (log-odds) forms, ``log(p / (1 - p))`` computed as a difference of logits and a
log-sum-exp of the *other* classes, which never saturates for finite logits.

Models are queried in fixed-size, zero-padded chunks (:func:`query`), so a sample's logits, and
every score computed from them, do not depend on which other samples were queried with it (a
BLAS kernel may round a row differently for a different batch size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError

__all__ = [
    "QUERY_CHUNK",
    "LogitsFn",
    "as_logits",
    "log_softmax",
    "logit_confidence",
    "max_logit_confidence",
    "max_probability",
    "modified_entropy",
    "query",
    "true_class_log_probability",
]

LogitsFn: TypeAlias = Callable[[NDArray[np.float32]], NDArray[Any]]
"""A target model as the auditor sees it: a batch of inputs in, logits ``[N, C]`` out.
``audit.runtime.OnnxModel.logits`` is one; a torch module wrapped in ``no_grad`` is another."""

Float64 = NDArray[np.float64]
QUERY_CHUNK = 256
"""Rows per model query: every query has exactly this batch size (the last one zero-padded)."""


def query(model: LogitsFn, x: NDArray[np.float32], *, chunk: int = QUERY_CHUNK) -> NDArray[Any]:
    """``model(x)`` evaluated in batches of exactly ``chunk`` rows, the last padded with zeros
    and the padding dropped: each row's output is computed in the same kernel shape whatever
    its companions, so it is bit-for-bit independent of them."""
    if len(x) == 0:
        return np.asarray(model(x))
    parts = []
    for start in range(0, len(x), chunk):
        batch = np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)
        rows = len(batch)
        if rows < chunk:
            batch = np.concatenate([batch, np.zeros((chunk - rows, *x.shape[1:]), np.float32)])
        parts.append(np.asarray(model(batch))[:rows])
    return np.concatenate(parts)


def as_logits(
    target: LogitsFn | NDArray[Any], x: NDArray[np.float32], y: NDArray[np.int64]
) -> Float64:
    """Logits of ``target`` on ``x`` as float64 ``[N, C]``; ``target`` may already be logits.

    Rejects shapes that disagree with ``y`` and labels outside the model's classes, so that no
    attack silently reads a wrong column."""
    raw = np.asarray(target if isinstance(target, np.ndarray) else query(target, x))
    logits = raw.astype(np.float64, copy=False)
    if logits.ndim != 2 or logits.shape[0] != len(y):
        raise InputError(f"the model returned logits of shape {logits.shape} for {len(y)} samples")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise InputError(
            f"labels must lie in [0, {logits.shape[1] - 1}] for a model with "
            f"{logits.shape[1]} outputs, got {int(y.min())}..{int(y.max())}"
        )
    if not np.isfinite(logits).all():
        raise InputError("the model returned NaN or infinite logits")
    return logits


def log_softmax(logits: Float64) -> Float64:
    """Row-wise ``log softmax``; exact to rounding for any finite logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: Float64 = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def true_class_log_probability(logits: Float64, y: NDArray[np.int64]) -> Float64:
    """``log p_y`` (the negative cross-entropy loss), as ``-log(1 + exp(-phi))`` from the
    log-odds :func:`logit_confidence`: accurate to rounding when ``p_y`` is within 1e-300 of 1
    (``log(sum exp)`` of the shifted row would round ``log(1 + 1e-20)`` to 0)."""
    out: Float64 = -np.logaddexp(0.0, -logit_confidence(logits, y))
    return out


def _log_odds(logits: Float64, column: NDArray[np.intp]) -> Float64:
    """``log(p_c / (1 - p_c))`` for class ``column[n]`` of row ``n``: its logit minus the
    log-sum-exp of the other logits (shifted by their own maximum)."""
    rows = np.arange(len(column))
    others = logits.copy()
    others[rows, column] = -np.inf
    top = others.max(axis=1)
    lse_others = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    out: Float64 = logits[rows, column] - lse_others
    return out


def logit_confidence(logits: Float64, y: NDArray[np.int64]) -> Float64:
    """LiRA's logit-scaled confidence ``phi = log(p_y / (1 - p_y))``.

    Computed as ``logit_y - logsumexp(logits of the other classes)``, which equals the definition
    and stays finite and ordered when ``p_y`` rounds to 1 in float64. It is a strictly
    increasing function of ``log p_y``, so it ranks samples exactly as the loss does."""
    return _log_odds(logits, np.asarray(y, dtype=np.intp))


def max_logit_confidence(logits: Float64) -> Float64:
    """The log-odds of the highest softmax probability, ``log(p_max / (1 - p_max))``: a strictly
    increasing function of :func:`max_probability` that never rounds to a tie."""
    return _log_odds(logits, logits.argmax(axis=1))


def max_probability(logits: Float64) -> Float64:
    """The highest softmax probability (label-free confidence, Salem et al. 2019). Rounds to 1
    for confident rows; attacks rank by :func:`max_logit_confidence` instead."""
    from scipy.special import expit

    out: Float64 = expit(max_logit_confidence(logits))
    return out


def _log1mexp(log_p: Float64) -> Float64:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, accurate on both ends (Mächler 2012)."""
    out = np.empty_like(log_p)
    near_one = log_p > -np.log(2.0)
    with np.errstate(divide="ignore"):
        out[near_one] = np.log(-np.expm1(log_p[near_one]))
        out[~near_one] = np.log1p(-np.exp(log_p[~near_one]))
    return out


def modified_entropy(logits: Float64, y: NDArray[np.int64]) -> Float64:
    """Song & Mittal's modified prediction entropy (2021), lower for members:

    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``.

    ``log(1 - p)`` is taken from ``log p`` with :func:`_log1mexp`; a probability that rounds to 1
    is capped at ``log(1 - p) >= -745`` (the smallest float64 exponent), which keeps the value
    finite and the ordering intact."""
    logp = log_softmax(logits)
    p = np.exp(logp)
    log1mp = np.maximum(_log1mexp(np.minimum(logp, 0.0)), -745.0)
    rows = np.arange(len(y))
    own = -(1.0 - p[rows, y]) * logp[rows, y]
    terms = p * log1mp
    terms[rows, y] = 0.0
    out: Float64 = own - terms.sum(axis=1)
    return out
