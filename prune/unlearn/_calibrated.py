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
    DEFAULT_TOLERANCE,
    CalibratedPatches,
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
from prune.gates import resolve_gate
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
    gate: str


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
            retained=1.0 - len(request.indices) / len(y_train),
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
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sound upper bounds of ``max_S (e_label - e_rival) . (f + p)`` (weak duality, Lagrangian
    multipliers, as shipped in float32) for points whose region's patch was built for another
    label, and those multipliers ``[N, H]``."""
    regions = linearize(head, active, box=box, dense=False)
    rows = np.arange(len(labels))
    f1 = regions.F1.numpy() + C.transpose(0, 2, 1)
    f2 = regions.F2.numpy() + d
    w = torch.from_numpy(f1[rows, labels] - f1[rows, rival]).unsqueeze(1)
    const = f2[rows, labels] - f2[rows, rival]
    lam = _SOLVER.multipliers(regions, w).clamp_min(0.0)
    lam = lam.to(torch.float32).to(torch.float64)
    bound = dual_bound(regions, w, lam)[:, 0].numpy() + const
    return np.asarray(bound), np.asarray(lam[:, 0].numpy())


_GUARD_STEPS = (4.0, np.inf)
"""Tolerances tried, as multiples of the requested one, for a patch whose region holds retained
training rows it would move to another class (``inf``: a constant patch)."""


def _moved(
    head: PLHead,
    sol: CalibratedPatches,
    rows: NDArray[np.int64],
    x: NDArray[np.float64],
    patch: NDArray[np.int64],
    pred: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Per row of ``sol`` listed in ``rows``: how many retained points of its region (cut values
    ``x``, region ``patch``, original prediction ``pred``) the patch moves to another class."""
    at = np.searchsorted(rows, patch)
    mine = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == patch)
    count = np.zeros(len(rows), dtype=np.int64)
    if not mine.any():
        return count
    u = at[mine]
    logits, _ = head.forward(x[mine])
    patched = logits + np.einsum("ni,nio->no", x[mine], sol.C[u]) + sol.d[u]
    np.add.at(count, u, patched.argmax(axis=1) != pred[mine])
    return count


_SCREEN_BLOCK = 32
"""First-layer units a screening round of :func:`_regions_of_rows` tests."""


def _regions_of_rows(
    head: PLHead, x: NDArray[np.float64], active: NDArray[np.bool_]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Per row of cut values ``x``, the row of ``active`` whose pattern it has (-1: none), and
    the original logits of the rows that have one (in row order).

    Few retained rows share a forget region, so the first hidden layer is screened
    ``_SCREEN_BLOCK`` units at a time on the rows whose signs so far still equal some
    pattern's (a 64-bit hash of the signs seen, compared with the patterns' hashes), and only
    the survivors go through the whole head in float64, where their patterns are matched
    exactly. The full pass over every retained row took 3 s of a 5 s Fashion-MNIST call; a row
    screened out by a rounding difference at a unit's exact zero only escapes the guard's
    count, which chooses a tolerance and never a certificate."""
    patch = np.full(len(x), -1, dtype=np.int64)
    if not len(x):
        return patch, np.zeros((0, head.classes))
    rows = np.arange(len(x))
    if head.hidden_sizes and len(active):
        first = head.layers[0]
        weight, bias = np.asarray(first.weight), np.asarray(first.bias)
        units = weight.shape[0]
        salt = np.asarray(np.random.default_rng(0).integers(1, 2**63, size=units, dtype=np.uint64))
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        seen = np.zeros(len(x), dtype=np.uint64)
        wanted = np.zeros(len(active), dtype=np.uint64)
        for start in range(0, units, _SCREEN_BLOCK):
            block = slice(start, min(start + _SCREEN_BLOCK, units))
            part = flat if len(rows) == len(flat) else flat[rows]
            signs = (part @ weight[block].T + bias[block]) >= 0.0
            with np.errstate(over="ignore"):
                seen = seen + (signs * salt[block]).sum(axis=1, dtype=np.uint64)
                wanted = wanted + (active[:, block] * salt[block]).sum(axis=1, dtype=np.uint64)
            alive = np.isin(seen, wanted)
            rows, seen = rows[alive], seen[alive]
            if not len(rows):
                return patch, np.zeros((0, head.classes))
    logits, z = head.forward(x[rows])
    index = {k: i for i, k in enumerate(pattern_keys(active))}
    found = np.array([index.get(k, -1) for k in pattern_keys(z >= 0)], dtype=np.int64)
    patch[rows] = found
    return patch, logits[found >= 0]


def _guarded_patches(
    head: PLHead,
    box: InputBox,
    points: ForgetPoints,
    rep: NDArray[np.int64],
    labels: NDArray[np.int64],
    targets: NDArray[np.float64],
    slack: NDArray[np.float64],
    *,
    tolerance: float,
    retained: NDArray[np.float64] | None,
) -> CalibratedPatches:
    """:func:`calibrated_patches` with the requested tolerance, then, for each patch whose
    region holds retained training rows that it moves to another class than the original
    predicts, the smallest larger tolerance of :data:`_GUARD_STEPS` that moves fewest of them.
    The owner's own data decides (no test data); each patch's stated bound is its own.
    Tolerance 0 (flat margins requested) is never relaxed."""
    x, active = points.x[rep], points.active[rep]
    sol = calibrated_patches(head, box, x, active, labels, targets, slack, tolerance=tolerance)
    if retained is None or len(retained) == 0 or tolerance == 0:
        return sol  # tolerance 0 asks for flat margins everywhere: nothing to relax
    patch, logits = _regions_of_rows(head, retained, active)
    inside = patch >= 0
    rx, rp, pred = retained[inside], patch[inside], logits.argmax(axis=1)
    order = np.argsort(rp, kind="stable")
    rx, rp, pred = rx[order], rp[order], pred[order]
    every = np.arange(len(rep), dtype=np.int64)
    best = _moved(head, sol, every, rx, rp, pred)
    fields = {f: np.array(getattr(sol, f), copy=True) for f in sol.__dataclass_fields__}
    for factor in _GUARD_STEPS:
        rows = np.flatnonzero(best > 0)
        if len(rows) == 0:
            break
        sub = calibrated_patches(
            head,
            box,
            x[rows],
            active[rows],
            labels[rows],
            targets[rows],
            slack[rows],
            tolerance=np.inf if np.isinf(factor) else tolerance * factor,
        )
        keep = np.isin(rp, rows)
        moved = _moved(
            head, sub, np.arange(len(rows)), rx[keep], np.searchsorted(rows, rp[keep]), pred[keep]
        )
        better = moved < best[rows]
        for f in fields:
            fields[f][rows[better]] = getattr(sub, f)[better]
        best[rows[better]] = moved[better]
    return CalibratedPatches(**fields)


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
    tolerance: float = DEFAULT_TOLERANCE,
    retained: NDArray[np.float64] | None = None,
) -> CalibratedOutcome:
    """Solve, export, re-check; one claim per point that passes the re-check. ``gate`` may be
    ``auto`` (resolved on the number of distinct regions; the outcome names the gate used).
    ``retained``: cut values of retained training rows, which guard the tolerance
    (:func:`_guarded_patches`)."""
    head = imported.head
    first: dict[bytes, int] = {}
    region_of = np.empty(len(points), dtype=np.int64)
    reps: list[int] = []
    for m, key in enumerate(pattern_keys(points.active)):
        region_of[m] = first.setdefault(key, len(first))
        if region_of[m] == len(reps):
            reps.append(m)
    rep = np.asarray(reps, dtype=np.int64)
    gate = resolve_gate(gate, len(rep), imported.proto)  # one patch per distinct region
    # float32 slack, plus twice the rigorous float32 logit error the verifier's
    # region.certificate charges (prune.proofs._duals.float32_logit_error)
    f32 = 2.0 * float32_logit_error(head, points.active, box).max(axis=1)
    slack = FLOAT32_SLACK * (1.0 + np.abs(targets.logits[rep]).max(axis=1)) + f32[rep]
    sol = _guarded_patches(
        head,
        box,
        points,
        rep,
        forget_y[rep],
        targets.logits[rep],
        slack,
        tolerance=tolerance,
        retained=retained,
    )
    # declared output of every point: (f + p)(x) with its region's patch, in float64
    C_m, d_m = sol.C[region_of], sol.d[region_of]
    declared = points.logits + np.einsum("mi,mio->mo", points.x, C_m) + d_m
    rival = sol.rival[region_of]
    bound = sol.bound[region_of]
    lam = sol.lam[region_of]
    other = np.flatnonzero(forget_y != forget_y[rep][region_of])
    if len(other):
        # a point sharing a region with another label: its margin is not the flattened one;
        # state a sound (looser) bound of its own obligation instead
        rival[other] = rivals(declared[other], forget_y[other])
        own, lam[other] = _own_bounds(
            head,
            box,
            points.active[other],
            forget_y[other],
            rival[other],
            C_m[other],
            d_m[other],
        )
        bound[other] = (
            own + FLOAT32_SLACK * (1.0 + np.abs(declared[other]).max(axis=1)) + f32[other]
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
        "tolerance": tolerance,
        "flattened_mean": float(sol.alpha.mean()),
        "output_gap_max": float(np.abs(z - declared).max()),
    }
    duals = np.ascontiguousarray(lam[ok], dtype=np.float32).reshape(len(claims), head.n_hidden)
    return CalibratedOutcome(
        gate=gate,
        duals=duals,
        patched=patched,
        claims=claims,
        ok=ok,
        patches=len(rep),
        d=sol.d,
        targets=targets,
        facts=facts,
    )
