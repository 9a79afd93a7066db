"""How each kind of method is run inside a cell, behind one registry (:data:`RUNNERS`).

Every runner returns an :class:`Outcome`: the ONNX model the method starts from, the ONNX model it
would deploy, and what unlearning cost (time measured around the unlearning call only; peak RSS
read right before and right after it). Baselines are torch models, exported to ONNX with the same
exporter as ``prune train``; PRUNE works on ONNX bytes directly. All models are then evaluated the
same way (onnxruntime), so no method is measured through a different runtime.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from benchmarks.study.artifacts import (
    ArtifactKey,
    Original,
    load_amnesiac,
    load_prepared_references,
    load_sisa,
)
from benchmarks.study.common import StudyError, peak_rss_mb, read_json
from benchmarks.study.plan import Cell
from prune.baselines import UNLEARNING_METHODS, AmnesiacModel, Retrain, SisaEnsemble
from prune.train import export_onnx

__all__ = ["RUNNERS", "Outcome", "needed_artifacts"]


@dataclass(frozen=True, kw_only=True)
class Outcome:
    before_onnx: bytes
    after_onnx: bytes
    seconds: float
    rss_before_mb: float
    rss_after_mb: float
    prepare_seconds: float | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)


Runner = Callable[[Cell, Original, Path, NDArray[np.int64]], Outcome]


def _onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_shape=input_shape)
        return path.read_bytes()


def _artifact(cell: Cell, kind: str) -> ArtifactKey:
    return ArtifactKey(kind=kind, dataset=cell.dataset, arch=cell.arch, seed=cell.seed)


def _run_original(cell: Cell, orig: Original, work: Path, forget: NDArray[np.int64]) -> Outcome:
    """No unlearning at all: the row every other row is read against."""
    rss = peak_rss_mb()
    return Outcome(
        before_onnx=orig.onnx,
        after_onnx=orig.onnx,
        seconds=0.0,
        rss_before_mb=rss,
        rss_after_mb=rss,
    )


def _run_baseline(cell: Cell, orig: Original, work: Path, forget: NDArray[np.int64]) -> Outcome:
    name = cell.variant.method
    cls = UNLEARNING_METHODS[name]
    kwargs = cell.variant.kwargs()
    method = cls(recipe=orig.recipe, **kwargs) if cls is Retrain else cls(**kwargs)
    before_onnx = orig.onnx
    prepare_seconds: float | None = None
    facts: dict[str, Any] = {}
    model: nn.Module
    if name == "sisa":
        folder = _artifact(cell, "sisa").folder(work)
        model = load_sisa(work, orig, cell.dataset, cell.arch, cell.seed)
        before_onnx = (folder / "model.onnx").read_bytes()
        prepare_seconds = float(read_json(folder / "meta.json")["prepare_seconds"])
    elif name == "amnesiac":
        meta = read_json(_artifact(cell, "amnesiac").folder(work) / "meta.json")
        if not meta["same_weights_as_original"]:
            raise StudyError("the logged Amnesiac training did not reproduce the original model")
        model = load_amnesiac(work, orig, cell.dataset, cell.arch, cell.seed)
        prepare_seconds = float(meta["prepare_seconds"])
        facts["log_bytes"] = int(meta["log_bytes"])
        facts["log_steps"] = int(meta["log_steps"])
    else:
        model = orig.model(_artifact(cell, "original").folder(work))
    generator = torch.Generator().manual_seed(cell.seed)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    out = method.unlearn(model, orig.x_train, orig.y_train, forget, generator=generator)
    seconds = time.perf_counter() - start
    rss_after = peak_rss_mb()
    if isinstance(out, SisaEnsemble):
        facts["retrained_shards"] = int(sum(out.retrain_counts))
        facts["shards"] = len(out.retrain_counts)
    if isinstance(out, AmnesiacModel):
        facts["undone_steps"] = len(out.undone)
        out = out.net
    return Outcome(
        before_onnx=before_onnx,
        after_onnx=_onnx(out, orig.recipe.input_shape),
        seconds=seconds,
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        prepare_seconds=prepare_seconds,
        facts=facts,
    )


def _run_prune(cell: Cell, orig: Original, work: Path, forget: NDArray[np.int64]) -> Outcome:
    try:
        from prune.unlearn import unlearn
    except ImportError as exc:
        raise StudyError("prune.unlearn is not available in this tree yet") from exc
    kwargs: dict[str, Any] = dict(cell.variant.params)
    prepare_seconds: float | None = None
    folds: int | None = None
    if kwargs.pop("prepared", False):
        prepared = load_prepared_references(work, orig, cell.dataset, cell.arch, cell.seed)
        kwargs["prepared"] = prepared
        prepare_seconds = float(prepared.seconds)
        folds = int(prepared.folds)
    if cell.setting.startswith("class-"):
        kwargs["forget_class"] = int(cell.setting.partition("-")[2])
    else:
        kwargs["forget_indices"] = forget
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    result = unlearn(
        orig.onnx,
        orig.x_train,
        orig.y_train,
        x_test=orig.x_test,
        y_test=orig.y_test,
        seed=cell.seed,
        **kwargs,
    )
    call_seconds = time.perf_counter() - start
    rss_after = peak_rss_mb()
    summary = dict(result.summary)
    keep = (
        "patches",
        "certified",
        "distinct_regions",
        "rounds",
        "seconds_prepare",
        "seconds_solve",
        "seconds_export_recheck",
        "seconds_evaluate",
    )
    facts: dict[str, Any] = {k: summary[k] for k in keep if k in summary}
    facts["failed"] = len(result.failed)
    if "calibrated" in summary:
        facts["calibrated"] = summary["calibrated"]
    facts["call_seconds"] = round(call_seconds, 4)
    if folds is not None:
        facts["prepare_folds"] = folds
    # The engine also evaluates utility on the whole training and test sets (for its summary);
    # baselines are timed without evaluation, so that part is left out of ``seconds``.
    evaluate = float(summary.get("seconds_evaluate", 0.0))
    return Outcome(
        before_onnx=orig.onnx,
        after_onnx=bytes(result.patched_model),
        seconds=max(call_seconds - evaluate, 0.0),
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        prepare_seconds=prepare_seconds,
        facts=facts,
    )


RUNNERS: Mapping[str, Runner] = {
    "original": _run_original,
    "prune": _run_prune,
    **{name: _run_baseline for name in UNLEARNING_METHODS},
}


def needed_artifacts(cell: Cell) -> list[ArtifactKey]:
    """The cached artifacts a cell reads, in build order."""
    keys = [_artifact(cell, "original")]
    keys.append(
        ArtifactKey(
            kind="reference",
            dataset=cell.dataset,
            arch=cell.arch,
            seed=cell.seed,
            setting=cell.setting,
        )
    )
    if cell.variant.method in ("sisa", "amnesiac"):
        keys.append(_artifact(cell, cell.variant.method))
    if cell.mia:
        keys.append(_artifact(cell, "mia-refs"))
    if dict(cell.variant.params).get("prepared"):
        keys.append(_artifact(cell, "prepared"))
    return keys
