"""Class deletion by suppression (the default ``--class-mode suppress``).

Steps: one onnxruntime pass of the original over the training data (the cut values for the box
and the remap's proxy, the original logits for everything else); declare the box; learn the
remap (form v2, :mod:`prune.unlearn._class_remap`; ``remap=False`` gives form v1); export the
patch (:mod:`prune.suppress`), which bounds the logits over the box and refuses a margin float32
would not honour; replay every training sample of the class through the exported model with
onnxruntime (its copy of the original's logits checked equal to the original's, its output
checked equal to the suppression nodes'); measure training utility from the original logits
through the suppression nodes alone (the same ops as the served model's), test utility with the
served model in the same session (both its logit tensors from one pass). Every sample of the class
gets a point claim (target = its new top class, margin 0: the per-sample statement is only "no
longer class K, checked at the point"); what is certified over the whole box is the single
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
from prune.formats import CLASS_REMAP_FORMAT, CLASS_SUPPRESS_FORMAT, ClassClaim, decimal_string
from prune.model import ImportedModel, OrtRunner
from prune.regions import box_from_data
from prune.suppress import export_suppressed, logit_bound, suppression_only
from prune.unlearn._class_remap import DEFAULT_PROXY_BUDGET, fit_remap
from prune.unlearn._evaluate import Predictions, margins_at, peak_rss_mb, utility
from prune.unlearn._request import ForgetRequest

__all__ = ["DEFAULT_CLASS_MARGIN", "DEFAULT_PROXY_BUDGET", "Suppressed", "suppress_class"]

DEFAULT_CLASS_MARGIN = 8.0
"""Logit gap ``m`` between the capped class and the best other class. Large enough that the
suppressed class keeps a negligible share of the probability (``<= e^-m`` of the top class), so
the distribution over the remaining classes is the original's restricted to them
(docs/BENCHMARKS.md, "Class unlearning", measures the choice against retraining)."""

_ROWS = 256
"""Rows per onnxruntime call of the original and the served model. Every row is computed on its
own (the served output is checked equal to the suppression of the pass's logits regardless of
how the rows are batched), so this only sets the size of onnxruntime's intermediate buffers:
measured on the Fashion-MNIST CNN's pass over 60,000 rows, 4,096 rows a call touch ~52,000
fresh pages of arena (its 100 MB convolution outputs) and take 2.1 s of CPU, 256 rows ~460
pages and 1.7 s, with bit-identical outputs."""


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
    remap: bool,
    proxy_budget: int,
    seed: int,
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
    y = np.asarray(y_train, dtype=np.int64)
    names = [head.output] if imported.input_space else [head.cut, head.output]
    original = OrtRunner(imported.raw, outputs=names, threads=threads)
    outs = original.run(x_train, batch_size=_ROWS)
    z_train = outs[-1]
    cut = x_train.reshape(len(x_train), -1) if imported.input_space else outs[0]
    cut = cut.reshape(len(cut), -1)
    box = box_from_data(cut, input_space=imported.input_space)
    t_pass = clock()
    fit = None
    if remap:
        fit = fit_remap(
            head,
            cut,
            z_train,
            y,
            forget_class=k,
            bound=logit_bound(head, box),
            margin=margin,
            budget=proxy_budget,
            seed=seed,
            clock=clock,
        )
    t_remap = clock()
    patched, bound = export_suppressed(
        imported,
        forget_class=k,
        margin=margin,
        box=box,
        remap=None if fit is None else fit.remap,
    )
    t_export = clock()
    tail = OrtRunner(
        suppression_only(
            classes=head.classes,
            forget_class=k,
            margin=margin,
            opset=_opset(imported.raw),
            remap=None if fit is None else fit.remap,
        ),
        outputs=[OUTPUT],
        threads=threads,
    )
    p_train = tail.run(z_train, batch_size=65536)[0]
    forget_y = y[request.indices]
    before = z_train[request.indices]
    served = OrtRunner(patched, outputs=[head.output, OUTPUT], threads=threads)
    z_rows, logits = served.run(x_train[request.indices], batch_size=_ROWS)
    if not np.array_equal(z_rows, before, equal_nan=True):
        raise PatchError(
            "internal: the served model's original logits differ from the original's on the "
            "class rows"
        )
    if not np.array_equal(logits, p_train[request.indices], equal_nan=True):
        raise PatchError(
            "internal: the served model and its suppression nodes disagree on the class rows"
        )
    target = np.asarray(logits.argmax(axis=1), dtype=np.int64)
    ok = (target != k) & (margins_at(logits, target) > 0) & np.isfinite(logits).all(axis=1)
    claims = tuple(
        Claim(
            leaf_index=m,
            train_index=int(request.indices[m]),
            label=k,
            original_prediction=int(before[m].argmax()),
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
        # one pass of the served model: its copy of the original's logits (checked equal to the
        # original's on the class rows above) and its output, no second session of the original
        z_test, p_test = served.run(x_test, batch_size=_ROWS)
        test = (_pred(z_test), _pred(p_test), np.asarray(y_test, dtype=np.int64))
    usefulness = utility(
        before=_pred(z_train),
        after=_pred(p_train),
        y=y,
        forget_rows=request.indices,
        test=test,
        classes=head.classes,
    )
    m32 = float(np.float32(margin))
    form = CLASS_SUPPRESS_FORMAT if fit is None else CLASS_REMAP_FORMAT
    claim = ClassClaim(
        forget_class=k,
        margin=decimal_string(m32),
        low=decimal_string(box.low),
        high=decimal_string(box.high),
        source=box.source,
        logit_bound=decimal_string(bound),
        form=form,
    )
    method: dict[str, Any] = {
        "name": "prune-class-suppress",
        "mode": "class",
        "class_mode": "suppress",
        "patch_form": form,
        "forget_class": k,
        "margin": m32,
        "cut": head.cut,
        "input_box": box.as_method(),
    }
    if fit is not None:
        method["remap"] = fit.as_method(proxy_budget, seed)
    finished = clock()
    summary: dict[str, Any] = {
        "version": 1,
        "mode": "class",
        "class_mode": "suppress",
        "patch_form": form,
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
        "seconds_unlearn": t_evaluate - started,
        "seconds_pass": t_pass - started,
        "seconds_remap": t_remap - t_pass,
        "seconds_export": t_export - t_remap,
        "seconds_recheck": t_evaluate - t_export,
        "seconds_evaluate": finished - t_evaluate,
        "peak_rss_mb": peak_rss_mb(),
    }
    if fit is not None:
        summary["remap"] = {
            **fit.as_method(proxy_budget, seed),
            "seconds_proxy": fit.seconds_proxy,
            "seconds_fit": fit.seconds_fit,
        }
    return Suppressed(patched, claims, failed, method, summary, claim)


def _opset(raw: bytes) -> int:
    import onnx

    for entry in onnx.load_from_string(raw).opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise PatchError("the model imports no default ONNX opset")


def _pred(logits: NDArray[np.float32]) -> Predictions:
    return Predictions(np.asarray(logits.argmax(axis=1), dtype=np.int64))
