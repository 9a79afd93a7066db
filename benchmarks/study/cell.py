"""One cell, run in its own process (so its peak memory is its own): load the cached original,
unlearn with the cell's method, measure, return the result document.

Result document (``version`` 1): the cell's configuration, ``status`` (``ok`` or ``failed``
with a one-line ``error``), and, when ok, ``accuracy`` (before/after on forget, retained and
test), ``kl_to_retrained`` (forget, test), ``mia`` (or ``null`` when not run), ``seconds`` (the
unlearning call), ``prepare_seconds`` (training-time work a method needs: SISA shards, Amnesiac's
logged training), ``memory`` (peak RSS before/after the unlearning call), ``model_bytes``
(deployed ONNX size) and ``size_ratio`` (deployed size / original ``model.onnx`` size),
``inference`` (test-set inference time of the deployed model against the original), the
method's own ``facts``, and the ``machine`` (CPU count, load average, versions).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from benchmarks.study.artifacts import (
    ArtifactKey,
    forget_indices,
    load_mia_references,
    load_original,
    mia_non_member_rows,
)
from benchmarks.study.common import machine, peak_rss_mb
from benchmarks.study.evaluate import (
    accuracy,
    inference_overhead,
    kl_divergence,
    logits,
    mia_metrics,
)
from benchmarks.study.methods import RUNNERS
from benchmarks.study.plan import HARNESS_VERSION, Cell
from prune.baselines import retain_indices

__all__ = ["run_cell"]


def run_cell(cell: Cell, *, work: Path, threads: int) -> dict[str, Any]:
    """Run ``cell`` in this process and return its result document (raises on failure)."""
    torch.set_num_threads(threads)
    started = time.time()
    facts_before = machine()
    orig = load_original(work, cell.dataset, cell.arch, cell.seed)
    forget = forget_indices(cell.setting, orig.y_train, cell.seed)
    keep = retain_indices(forget, len(orig.y_train))
    runner = RUNNERS.get(cell.variant.method)
    if runner is None:
        raise KeyError(f"no runner for method {cell.variant.method!r}")
    _warm_up()
    outcome = runner(cell, orig, work, forget)

    ref_key = ArtifactKey(
        kind="reference", dataset=cell.dataset, arch=cell.arch, seed=cell.seed, setting=cell.setting
    )
    reference = (ref_key.folder(work) / "model.onnx").read_bytes()
    x, y, xt, yt = orig.x_train, orig.y_train, orig.x_test, orig.y_test
    acc: dict[str, dict[str, float]] = {}
    per_class: dict[str, Any] = {
        "train_count": np.bincount(y, minlength=orig.recipe.classes).tolist(),
        "test_count": np.bincount(yt, minlength=orig.recipe.classes).tolist(),
    }
    z_after: dict[str, NDArray[np.float64]] = {}
    for when, model in (("before", outcome.before_onnx), ("after", outcome.after_onnx)):
        z_train, z_test = logits(model, x, threads=threads), logits(model, xt, threads=threads)
        acc[when] = {
            "forget": accuracy(z_train[forget], y[forget]),
            "retain": accuracy(z_train[keep], y[keep]),
            "test": accuracy(z_test, yt),
        }
        per_class[f"train_correct_{when}"] = _correct_per_class(z_train, y, orig.recipe.classes)
        per_class[f"test_correct_{when}"] = _correct_per_class(z_test, yt, orig.recipe.classes)
        z_after = {"forget": z_train[forget], "test": z_test}
    kl = {
        "forget": kl_divergence(logits(reference, x[forget], threads=threads), z_after["forget"]),
        "test": kl_divergence(logits(reference, xt, threads=threads), z_after["test"]),
    }
    inference = inference_overhead(orig.onnx, outcome.after_onnx, xt, threads=threads)
    mia = None
    if cell.mia:
        refs = load_mia_references(work, orig, cell.dataset, cell.arch, cell.seed)
        rows = mia_non_member_rows(cell.setting, len(forget), yt, cell.seed)
        mia = mia_metrics(
            outcome.after_onnx,
            (x[forget], y[forget]),
            (xt[rows], yt[rows]),
            refs,
            seed=cell.seed,
            threads=threads,
        )
        mia["two_version"] = _two_version(
            outcome.before_onnx, outcome.after_onnx, x[forget], xt[rows], cell.seed, threads
        )
    return {
        "version": 1,
        "harness": HARNESS_VERSION,
        "key": cell.key(),
        "cell": cell.to_json(),
        "status": "ok",
        "forget_size": len(forget),
        "train_size": len(y),
        "test_size": len(yt),
        "accuracy": acc,
        "per_class": per_class,
        "kl_to_retrained": kl,
        "mia": mia,
        "inference": inference,
        "seconds": round(outcome.seconds, 4),
        "prepare_seconds": outcome.prepare_seconds,
        "reference_retrain_seconds": _retrain_seconds(ref_key, work),
        "memory": {
            "peak_rss_before_unlearn_mb": round(outcome.rss_before_mb, 1),
            "peak_rss_after_unlearn_mb": round(outcome.rss_after_mb, 1),
            "peak_rss_cell_mb": round(peak_rss_mb(), 1),
        },
        "model_bytes": len(outcome.after_onnx),
        "size_ratio": round(len(outcome.after_onnx) / len(orig.onnx), 4),
        "facts": dict(outcome.facts),
        "threads": threads,
        "machine": {**facts_before, "loadavg_1m_end": machine()["loadavg_1m"]},
        "wall_seconds": round(time.time() - started, 2),
    }


def _two_version(
    before: bytes,
    after: bytes,
    forget_x: NDArray[np.float32],
    non_x: NDArray[np.float32],
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """The two-version comparison (audit.verify._two_version): output change between the
    model before and after unlearning, forget set vs non-members."""
    from audit.mia import evaluate
    from audit.verify._two_version import output_change

    forget = output_change(
        logits(before, forget_x, threads=threads), logits(after, forget_x, threads=threads)
    )
    non = output_change(
        logits(before, non_x, threads=threads), logits(after, non_x, threads=threads)
    )
    m = evaluate(forget, non, bootstrap=200, rng=np.random.default_rng(seed))
    return {
        "auc": m.auc.to_dict(),
        "forget_change_mean": float(forget.mean()),
        "non_member_change_mean": float(non.mean()),
    }


def _warm_up() -> None:
    """Pay one-time library costs before any timer starts: the first optimiser construction
    imports ``torch._dynamo`` (seconds), and solvers import scipy/scikit-learn lazily. Without
    this, whichever method runs first in a process would be charged for imports."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import scipy.optimize  # noqa: F401
    import sklearn.cluster  # noqa: F401

    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param], lr=1e-3)
    param.sum().backward()  # type: ignore[no-untyped-call]
    opt.step()
    with contextlib.suppress(ImportError):
        import prune.unlearn  # noqa: F401


def _correct_per_class(z: NDArray[np.float64], y: NDArray[np.int64], classes: int) -> list[int]:
    """How many samples of each class the model gets right (the paper's class-level table)."""
    right = z.argmax(axis=1) == y
    return np.bincount(y[right], minlength=classes).astype(int).tolist()  # type: ignore[no-any-return]


def _retrain_seconds(key: ArtifactKey, work: Path) -> float:
    import json

    meta = json.loads((key.folder(work) / "meta.json").read_text())
    return float(meta["train_seconds"])
