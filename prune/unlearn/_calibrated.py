"""``--target-policy calibrated``: patch each forgotten sample to the output of a model that never
saw it (:mod:`prune.calibrate`), export, and re-check with onnxruntime.

Points that share a linear region share one patch (the representative is the first of them):
the representative's true-class margin is flat over the region, so every point with the same
label gets the representative's margin; a point with another label gets a sound (looser)
Lagrangian bound of its own margin. Every point's declared output is ``(f+p)(x)`` at its own cut
value. The onnxruntime re-check
requires, per point, ``|ORT logits - declared output| <= tolerance`` (elementwise, tolerance
``FLOAT32_SLACK * (1 + max |output|)``) and ``logit[label] - logit[rival] <= upper_margin``;
a point failing either gets no claim and is listed as failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prune.calibrate import (
    CalibratedTargets,
    PreparedReferences,
    calibrated_patches,
    class_conditional_targets,
    cross_fitted_targets,
    rivals,
)
from prune.claims import CalibratedClaim
from prune.errors import PatchError
from prune.export import OUTPUT, export_patched
from prune.model import ImportedModel, OrtRunner, PLHead
from prune.patched import PatchSet, patch_bounds
from prune.proofs._duals import float32_logit_error
from prune.regions import InputBox, linearize, pattern_keys
from prune.solvers import LagrangianSolver, dual_bound
from prune.unlearn._evaluate import batch_rows
from prune.unlearn._points import FLOAT32_SLACK
from prune.unlearn._request import ForgetRequest
from prune.unlearn._strategies import ForgetPoints

__all__ = ["CalibratedOutcome", "output_tolerance", "run_calibrated"]


_SOLVER = LagrangianSolver(steps=10, lr=0.03)
"""Multipliers of the calibrated bounds start from 0 (no backward-pass start for affine
patches), where the larger step of the former default gets further in 10 steps."""


def output_tolerance(output: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per row, the allowed elementwise gap between the replayed and the declared output."""
    return np.asarray(FLOAT32_SLACK * (1.0 + np.abs(output).max(axis=1)))


@dataclass(frozen=True, eq=False)
class CalibratedOutcome:
    patched: bytes
    claims: tuple[CalibratedClaim, ...]
    ok: NDArray[np.bool_]
    patches: int
    d: NDArray[np.float64]
    targets: CalibratedTargets
    facts: dict[str, Any]
    duals: NDArray[np.float32]


def calibrated_targets(
    imported: ImportedModel,
    points: ForgetPoints,
    request: ForgetRequest,
    forget_y: NDArray[np.int64],
    *,
    prepared: PreparedReferences | None,
    calibration: str,
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    x_test: NDArray[np.float32] | None,
    y_test: NDArray[np.int64] | None,
    threads: int | None,
) -> CalibratedTargets:
    """Cross-fitted targets with ``prepared``, else class-conditional ones from ``--test``."""
    if request.forget_class is not None:
        raise PatchError(
            "--target-policy calibrated is for sample deletion; a forgotten class has no "
            "per-sample out-model target"
        )
    if prepared is not None:
        return cross_fitted_targets(
            prepared,
            request.indices,
            points.logits,
            calibration=calibration,  # type: ignore[arg-type]  # checked by cross_fitted_targets
        )
    if x_test is None or y_test is None:
        raise PatchError(
            "--target-policy calibrated needs prepared reference models (prune prepare, "
            "--prepared) or held-out data (--test) for its targets"
        )
    runner = OrtRunner(imported.raw, outputs=[imported.head.output], threads=threads)
    keep = np.ones(len(y_train), dtype=bool)
    keep[request.indices] = False
    return class_conditional_targets(
        points.logits,
        forget_y,
        member_logits=runner.run(np.ascontiguousarray(x_train[keep]))[0],
        member_y=np.asarray(y_train, dtype=np.int64)[keep],
        heldout_logits=runner.run(np.ascontiguousarray(x_test, dtype=np.float32))[0],
        heldout_y=np.asarray(y_test, dtype=np.int64),
    )


def _own_bounds(
    head: PLHead,
    box: InputBox,
    active: NDArray[np.bool_],
    labels: NDArray[np.int64],
    rival: NDArray[np.int64],
    C: NDArray[np.float64],
    d: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Sound upper bounds of ``max_S (e_label - e_rival) . (f + p)`` (weak duality, Lagrangian
    multipliers) for points whose region's patch flattens another label's margin."""
    regions = linearize(head, active, box=box, dense=False)
    rows = np.arange(len(labels))
    f1 = regions.F1.numpy() + C.transpose(0, 2, 1)
    f2 = regions.F2.numpy() + d
    w = torch.from_numpy(f1[rows, labels] - f1[rows, rival]).unsqueeze(1)
    const = f2[rows, labels] - f2[rows, rival]
    lam = _SOLVER.multipliers(regions, w)
    return np.asarray(dual_bound(regions, w, lam)[:, 0].numpy() + const)


def calibrated_duals(
    head: PLHead,
    box: InputBox,
    active: NDArray[np.bool_],
    C: NDArray[np.float64],
    d: NDArray[np.float64],
    claims: tuple[CalibratedClaim, ...],
    *,
    batch_size: int = 32,
) -> NDArray[np.float32]:
    """The region certificate rows of ``claims`` (one row each, in order): multipliers ``[H]``
    for ``max_{S_u} (e_label - e_rival) . (f + p_u)`` (:meth:`LagrangianSolver.multipliers`;
    near zero for a flattened margin, any ``lam >= 0`` is sound)."""
    rows: list[NDArray[np.float64]] = []
    solver = _SOLVER
    for start in range(0, len(claims), batch_size):
        chunk = claims[start : start + batch_size]
        u = np.array([c.patch for c in chunk], dtype=np.int64)
        y = np.array([c.label for c in chunk], dtype=np.int64)
        r = np.array([c.rival for c in chunk], dtype=np.int64)
        regions = linearize(head, active[u], box=box, dense=False)
        idx = np.arange(len(chunk))
        f1 = regions.F1.numpy() + C[u].transpose(0, 2, 1)
        w = torch.from_numpy(f1[idx, y] - f1[idx, r]).unsqueeze(1)
        lam = solver.multipliers(regions, w).clamp_min(0.0).numpy()
        rows.extend(lam[:, 0])
    return np.asarray(rows, dtype=np.float32).reshape(len(claims), head.n_hidden)


def run_calibrated(
    imported: ImportedModel,
    points: ForgetPoints,
    targets: CalibratedTargets,
    request: ForgetRequest,
    forget_x: NDArray[np.float32],
    forget_y: NDArray[np.int64],
    original_pred: NDArray[np.int64],
    *,
    box: InputBox,
    gate: str,
    n: float,
    threads: int | None,
) -> CalibratedOutcome:
    """Solve, export, re-check; one claim per point that passes the re-check."""
    head = imported.head
    first: dict[bytes, int] = {}
    region_of = np.empty(len(points), dtype=np.int64)
    reps: list[int] = []
    for m, key in enumerate(pattern_keys(points.active)):
        region_of[m] = first.setdefault(key, len(first))
        if region_of[m] == len(reps):
            reps.append(m)
    rep = np.asarray(reps, dtype=np.int64)
    # float32 slack, plus twice the rigorous float32 logit error the verifier's
    # region.certificate charges (prune.proofs._duals.float32_logit_error)
    f32 = 2.0 * float32_logit_error(head, points.active, box).max(axis=1)
    slack = FLOAT32_SLACK * (1.0 + np.abs(targets.logits[rep]).max(axis=1)) + f32[rep]
    sol = calibrated_patches(
        head, box, points.x[rep], points.active[rep], forget_y[rep], targets.logits[rep], slack
    )
    # declared output of every point: (f + p)(x) with its region's patch, in float64
    C_m, d_m = sol.C[region_of], sol.d[region_of]
    declared = points.logits + np.einsum("mi,mio->mo", points.x, C_m) + d_m
    rival = sol.rival[region_of]
    bound = sol.bound[region_of]
    other = np.flatnonzero(forget_y != forget_y[rep][region_of])
    if len(other):
        # a point sharing a region with another label: its margin is not the flattened one;
        # state a sound (looser) bound of its own obligation instead
        rival[other] = rivals(declared[other], forget_y[other])
        bound[other] = (
            _own_bounds(
                head,
                box,
                points.active[other],
                forget_y[other],
                rival[other],
                C_m[other],
                d_m[other],
            )
            + FLOAT32_SLACK * (1.0 + np.abs(declared[other]).max(axis=1))
            + f32[other]
        )
    patches = PatchSet(
        gate=gate,
        n=n,
        active=points.active[rep],
        d=sol.d,
        C=sol.C,
        K=patch_bounds(sol.C, sol.d, box),
        targets=sol.rival,
    )
    patched = export_patched(imported, patches, box)
    rows = batch_rows(len(rep), head.classes, head.n_hidden, dense=gate == "dense")
    logits = OrtRunner(patched, outputs=[OUTPUT], threads=threads).run(forget_x, batch_size=rows)[0]
    z = logits.astype(np.float64)
    every = np.arange(len(z))
    close = (np.abs(z - declared) <= output_tolerance(declared)[:, None]).all(axis=1)
    within = z[every, forget_y] - z[every, rival] <= bound
    ok = np.asarray(close & within & np.isfinite(z).all(axis=1))
    claims = tuple(
        CalibratedClaim(
            leaf_index=i,
            train_index=int(request.indices[i]),
            label=int(forget_y[i]),
            original_prediction=int(original_pred[i]),
            rival=int(rival[i]),
            patch=int(region_of[i]),
            upper_margin=float(bound[i]),
            output=tuple(float(v) for v in declared[i]),
            source=targets.source,
        )
        for i in range(len(z))
        if ok[i]
    )
    facts = {
        "target_source": targets.source,
        "calibration": targets.calibration,
        "calibration_scales": list(targets.scales),
        "target_margin_mean": float(sol.target_margin.mean()),
        "certified_upper_gap_max": float((sol.certified_upper - sol.target_margin).max()),
        "output_gap_max": float(np.abs(z - declared).max()),
    }
    duals = calibrated_duals(head, box, points.active[rep], sol.C, sol.d, claims)
    return CalibratedOutcome(
        duals=duals,
        patched=patched,
        claims=claims,
        ok=ok,
        patches=len(rep),
        d=sol.d,
        targets=targets,
        facts=facts,
    )
