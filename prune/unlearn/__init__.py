"""The PRUNE unlearning pipeline (owner side): :func:`unlearn` returns an
:class:`UnlearnResult` (patched ONNX bytes, one claim per changed and certified forget sample,
method parameters, run summary), which ``prune unlearn`` writes to the proof folder and
:func:`prune.proofs.write_signed_proof` signs."""

from __future__ import annotations

from prune.unlearn._pipeline import (
    CLASS_MODES,
    DEFAULT_CLASS_MARGIN,
    DEFAULT_MARGIN,
    DEFAULT_N,
    DEFAULT_PROXY_BUDGET,
    DEFAULT_SOLVER_STEPS,
    FLOAT32_SLACK,
    RETRIES,
    UnlearnResult,
    unlearn,
)
from prune.unlearn._request import ForgetRequest, forget_request
from prune.unlearn._strategies import STRATEGIES

__all__ = [
    "CLASS_MODES",
    "DEFAULT_CLASS_MARGIN",
    "DEFAULT_MARGIN",
    "DEFAULT_N",
    "DEFAULT_PROXY_BUDGET",
    "DEFAULT_SOLVER_STEPS",
    "FLOAT32_SLACK",
    "RETRIES",
    "STRATEGIES",
    "ForgetRequest",
    "UnlearnResult",
    "forget_request",
    "unlearn",
]
