"""Class deletion by suppression (the default ``--class-mode suppress``).

Steps: declare the box; export the suppression patch (:mod:`prune.suppress`), which bounds the
logits over the box and refuses a margin float32 would not honour; replay every training sample
of the class through the exported model with onnxruntime; measure utility. Every sample of the
class gets a point claim (target = its new top class, margin 0: the per-sample statement is only
"no longer class K, checked at the point"); what is certified over the whole box is the single
:class:`prune.formats.ClassClaim`. A sample that still gets ``K`` (impossible by construction) or
ties at the top is listed as failed, never claimed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.claims import Claim
from prune.errors import PatchError
from prune.export import OUTPUT
from prune.formats import ClassClaim, decimal_string
from prune.model import ImportedModel, OrtRunner
from prune.suppress import CLASS_SUPPRESS_FORMAT, export_suppressed
from prune.unlearn._evaluate import Predictions, margins_at, peak_rss_mb, utility
from prune.unlearn._points import declare_box
from prune.unlearn._request import ForgetRequest

__all__ = ["DEFAULT_CLASS_MARGIN", "Suppressed", "suppress_class"]

DEFAULT_CLASS_MARGIN = 8.0
"""Logit gap ``m`` between the capped class and the best other class. Large enough that the
suppressed class keeps a negligible share of the probability (``<= e^-m`` of the top class), so
the distribution over the remaining classes is the original's restricted to them
(docs/BENCHMARKS.md, "Class unlearning", measures the choice against retraining)."""


@dataclass(frozen=True, eq=False)
class Suppressed:
    """The patched model, the per-sample point claims, failed leaves, method parameters, run
    summary and the class claim."""

    model: bytes
    claims: tuple[Claim, ...]
    failed: tuple[int, ...]
    method: dict[str, Any]
    summary: dict[str, Any]
    claim: ClassClaim


def suppress_class(
    imported: ImportedModel,
    request: ForgetRequest,
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    x_test: NDArray[np.float32] | None,
    y_test: NDArray[np.int64] | None,
    *,
    margin: float,
    threads: int | None,
    clock: Callable[[], float],
    started: float,
) -> Suppressed:
    """Suppress ``request.forget_class`` (see the module docstring)."""
    assert request.forget_class is not None
    k = int(request.forget_class)
    if not (np.isfinite(margin) and margin > 0):
        raise PatchError(f"the margin must be a positive number, got {margin}")
    head = imported.head
    box = declare_box(imported, x_train)
    patched, bound = export_suppressed(imported, forget_class=k, margin=margin, box=box)
    t_export = clock()
    # one onnxruntime pass per data set gives both models' logits: the served file computes the
    # original logits as an intermediate tensor (its original graph is byte-identical)
    both = OrtRunner(patched, outputs=[head.output, OUTPUT], threads=threads)
    z_train, p_train = both.run(x_train, batch_size=4096)
    forget_y = np.asarray(y_train, dtype=np.int64)[request.indices]
    original, logits = z_train[request.indices], p_train[request.indices]
    target = np.asarray(logits.argmax(axis=1), dtype=np.int64)
    ok = (target != k) & (margins_at(logits, target) > 0) & np.isfinite(logits).all(axis=1)
    claims = tuple(
        Claim(
            leaf_index=m,
            train_index=int(request.indices[m]),
            label=k,
            original_prediction=int(original[m].argmax()),
            target=int(target[m]),
            patch=0,
            certified_margin=0.0,
            region="point-only",
        )
        for m in range(len(forget_y))
        if ok[m]
    )
    failed = tuple(int(m) for m in np.flatnonzero(~ok))
    t_evaluate = clock()
    test = None
    if x_test is not None and y_test is not None:
        z_test, p_test = both.run(np.ascontiguousarray(x_test, dtype=np.float32), batch_size=4096)
        test = (_pred(z_test), _pred(p_test), np.asarray(y_test, dtype=np.int64))
    usefulness = utility(
        before=_pred(z_train),
        after=_pred(p_train),
        y=np.asarray(y_train, dtype=np.int64),
        forget_rows=request.indices,
        test=test,
        classes=head.classes,
    )
    m32 = float(np.float32(margin))
    claim = ClassClaim(
        forget_class=k,
        margin=decimal_string(m32),
        low=decimal_string(box.low),
        high=decimal_string(box.high),
        source=box.source,
        logit_bound=decimal_string(bound),
    )
    method: dict[str, Any] = {
        "name": "prune-class-suppress",
        "mode": "class",
        "class_mode": "suppress",
        "patch_form": CLASS_SUPPRESS_FORMAT,
        "forget_class": k,
        "margin": m32,
        "cut": head.cut,
        "input_box": box.as_method(),
    }
    finished = clock()
    summary: dict[str, Any] = {
        "version": 1,
        "mode": "class",
        "class_mode": "suppress",
        "forget_class": k,
        "forget_points": len(forget_y),
        **usefulness,
        "patches": 1,
        "certified": len(claims),
        "failed": list(failed),
        "class_claim": claim.removed,
        "class_margin": m32,
        "logit_bound": bound,
        "seconds": finished - started,
        "seconds_export": t_export - started,
        "seconds_recheck": t_evaluate - t_export,
        "seconds_evaluate": finished - t_evaluate,
        "peak_rss_mb": peak_rss_mb(),
    }
    return Suppressed(patched, claims, failed, method, summary, claim)


def _pred(logits: NDArray[np.float32]) -> Predictions:
    return Predictions(np.asarray(logits.argmax(axis=1), dtype=np.int64))
