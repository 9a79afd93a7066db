"""Running models over data sets with onnxruntime, and the run summary and method parameters
(DESIGN.md §9).

All accuracies are fractions in [0, 1] measured with onnxruntime on the exported files - the same
runtime the auditor replays with - never with the owner's torch code."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.model import OrtRunner
from prune.regions import InputBox
from prune.unlearn._request import ForgetRequest

__all__ = [
    "Predictions",
    "batch_rows",
    "margins_at",
    "method_parameters",
    "peak_rss_mb",
    "predictions",
    "shared_regions",
    "utility",
]


def batch_rows(patches: int, classes: int, hidden: int, *, dense: bool, budget: float = 5e8) -> int:
    """Rows per onnxruntime call so that the patch intermediates (``[rows, P, O]`` and, for the
    dense gate, ``[rows, P*H]``) stay within ``budget`` bytes."""
    per_row = 4.0 * (4 * patches * classes + (5 * patches * hidden if dense else 3 * patches))
    return int(min(4096, max(16, budget // max(per_row, 1.0))))


@dataclass(frozen=True, eq=False)
class Predictions:
    """Predicted classes of one model on one data set."""

    pred: NDArray[np.int64]

    def accuracy(self, y: NDArray[np.int64], mask: NDArray[np.bool_] | None = None) -> float:
        sel = np.ones(len(y), dtype=bool) if mask is None else mask
        return float((self.pred[sel] == y[sel]).mean()) if sel.any() else float("nan")

    def per_class(self, y: NDArray[np.int64], classes: int) -> dict[str, float]:
        return {str(k): self.accuracy(y, y == k) for k in range(classes) if (y == k).any()}


def predictions(
    raw: bytes, output: str, x: NDArray[np.float32], *, rows: int, threads: int | None = None
) -> Predictions:
    logits = OrtRunner(raw, outputs=[output], threads=threads).run(x, batch_size=rows)[0]
    return Predictions(np.asarray(logits.argmax(axis=1), dtype=np.int64))


def margins_at(logits: NDArray[np.float32], targets: NDArray[np.int64]) -> NDArray[np.float64]:
    """``logit_t - max_{j != t} logit_j`` per row (float64 of the float32 logits)."""
    lg = logits.astype(np.float64)
    rows = np.arange(len(lg))
    own = lg[rows, targets]
    other = lg.copy()
    other[rows, targets] = -np.inf
    return np.asarray(own - other.max(axis=1))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def utility(
    *,
    before: Predictions,
    after: Predictions,
    y: NDArray[np.int64],
    forget_rows: NDArray[np.int64],
    test: tuple[Predictions, Predictions, NDArray[np.int64]] | None,
    classes: int,
) -> dict[str, Any]:
    """Forget/retain/test accuracies before and after, per-class test accuracies."""
    forget = np.zeros(len(y), dtype=bool)
    forget[forget_rows] = True
    out: dict[str, Any] = {
        "forget_accuracy_before": before.accuracy(y, forget),
        "forget_accuracy_after": after.accuracy(y, forget),
        "retain_accuracy_before": before.accuracy(y, ~forget) if (~forget).any() else None,
        "retain_accuracy_after": after.accuracy(y, ~forget) if (~forget).any() else None,
        "train_accuracy_before": before.accuracy(y),
        "train_accuracy_after": after.accuracy(y),
        "retain_prediction_changes": int((before.pred[~forget] != after.pred[~forget]).sum()),
    }
    if test is not None:
        t_before, t_after, y_test = test
        out |= {
            "test_accuracy_before": t_before.accuracy(y_test),
            "test_accuracy_after": t_after.accuracy(y_test),
            "per_class_test_accuracy_before": t_before.per_class(y_test, classes),
            "per_class_test_accuracy_after": t_after.per_class(y_test, classes),
            "test_prediction_changes": int((t_before.pred != t_after.pred).sum()),
        }
    return out


def shared_regions(active: NDArray[np.bool_]) -> int:
    """Forget points whose region holds at least one other forget point."""
    _, inverse, counts = np.unique(
        np.packbits(active, axis=1), axis=0, return_inverse=True, return_counts=True
    )
    return int((counts[inverse.reshape(-1)] > 1).sum())


def method_parameters(
    request: ForgetRequest,
    *,
    solver: str,
    solver_options: dict[str, float | int | str],
    gate: str,
    policy: str,
    strategy: str,
    margin: float,
    n: float,
    slack: float,
    cut: str,
    box: InputBox,
    seed: int,
) -> dict[str, Any]:
    """The method parameters recorded in the certificate (JSON-able)."""
    method: dict[str, Any] = {
        "name": "prune",
        "mode": request.mode,
        "solver": solver,
        "solver_options": solver_options,
        "gate": gate,
        "target_policy": policy,
        "strategy": strategy,
        "n": float(n),
        "margin": float(margin),
        "float32_slack": slack,
        "cut": cut,
        "input_box": box.as_method(),
        "seed": int(seed),
    }
    if request.forget_class is not None:
        method["forget_class"] = request.forget_class
    return method
