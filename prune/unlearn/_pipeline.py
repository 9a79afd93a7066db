"""``unlearn``: ONNX model + training data + forget request in, patched ONNX + claims out.

Steps: validate; import the model and its PL head at the cut; run the original with
onnxruntime (cut values, hidden pre-activations, logits); declare the input box; a strategy
plans the patches (:mod:`prune.unlearn._strategies`), certified in float64 with margin
``margin + slack``, ``slack = FLOAT32_SLACK * (1 + max_j |f_j(x)|)`` (a budget for the float32
evaluation of head and patch, not a proven worst-case bound: the re-check below is what holds at
the points, and the region claims keep the slack as their reserve); export; **re-check every forget point on the exported model
with onnxruntime** (prediction = target, margin >= ``margin``). Patches whose points fail are
re-solved with a larger margin (up to ``RETRIES`` times); points still failing get no claim and
are listed in ``UnlearnResult.failed`` - never silently claimed.

Claim semantics: ``certified_margin = margin`` holds, in exact arithmetic with the float32 slack
to spare, on the whole region of the sample, *considering that patch alone*; within ``1/n`` of a
region's boundary another patch's band can add its own push (see :mod:`prune.patched`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from prune.calibrate import DEFAULT_TOLERANCE, PreparedReferences
from prune.claims import CalibratedClaim, Claim
from prune.errors import DataError, PatchError
from prune.export import OUTPUT, export_patched
from prune.formats import ClassClaim
from prune.gates import AUTO, GATES, TreeGate, resolve_gate, tree_refusal
from prune.model import ImportedModel, OrtRunner, load_model
from prune.patched import PatchSet, patch_bounds
from prune.proofs._duals import region_duals
from prune.regions import InputBox
from prune.solvers import SOLVERS, make_solver
from prune.targets import CALIBRATED, POLICY_NAMES, default_policy
from prune.unlearn._calibrated import calibrated_targets, run_calibrated
from prune.unlearn._class import DEFAULT_CLASS_MARGIN, DEFAULT_PROXY_BUDGET, suppress_class
from prune.unlearn._evaluate import (
    batch_rows,
    margins_at,
    method_parameters,
    peak_rss_mb,
    predictions,
    shared_regions,
    utility,
)
from prune.unlearn._points import FLOAT32_SLACK, declare_box, forget_points
from prune.unlearn._request import ForgetRequest, check_data, forget_request
from prune.unlearn._strategies import (
    STRATEGIES,
    Plan,
    SolveContext,
    plan_patches,
    solve_with_duals,
)

__all__ = [
    "CLASS_MODES",
    "DEFAULT_CLASS_MARGIN",
    "DEFAULT_MARGIN",
    "DEFAULT_N",
    "DEFAULT_PROXY_BUDGET",
    "DEFAULT_SOLVER_STEPS",
    "FLOAT32_SLACK",
    "RETRIES",
    "UnlearnResult",
    "unlearn",
]

DEFAULT_MARGIN = 0.1
LP_SOLVERS = frozenset({"scale-shift", "reassure"})
"""Solvers that certify with exact LPs: their region certificates carry the LP's multipliers."""
DEFAULT_N = 1000.0
# The lagrangian solver's dual-ascent steps for the constant patches the pipeline sizes: none.
# The bound-propagation multipliers certify every region already; 6 Adam steps shrink the mean
# push on the 600 Fashion-MNIST regions from 81.6 to 47.1 logits and make the unlearn call 3.3x
# slower (x23.6 against retraining instead of x82.7, issue 16). The push only matters inside the
# gate's 1/n band around each region, where no measured number moved (docs/BENCHMARKS.md).
DEFAULT_SOLVER_STEPS = 0
RETRIES = 2
ClassMode = Literal["suppress", "regions"]
CLASS_MODES: tuple[ClassMode, ...] = ("suppress", "regions")
"""How ``forget_class`` is honoured: ``suppress`` (default) caps the class's logit below the best
other class everywhere and certifies it over the whole input box (:mod:`prune.suppress`);
``regions`` patches the linear regions of the class's training samples only (the class stays
predictable elsewhere, e.g. on its test samples)."""


@dataclass(frozen=True, eq=False)
class UnlearnResult:
    """The outcome of one run. ``claims`` holds one claim per forget sample that was changed and
    certified, in leaf order; ``failed`` lists the leaf indices of the others (empty when the run
    is complete). ``forget_x``/``forget_y`` are all requested samples in leaf order (model input
    shape), ``forget_indices`` their training rows (private to the owner)."""

    patched_model: bytes
    claims: tuple[Claim | CalibratedClaim, ...]
    method: dict[str, Any]
    summary: dict[str, Any]
    forget_x: NDArray[np.float32]
    forget_y: NDArray[np.int64]
    forget_indices: NDArray[np.int64]
    failed: tuple[int, ...]
    duals: NDArray[np.float32] | None = None
    """The region certificate: dual multipliers of every certified claim's obligation rows
    (:func:`prune.proofs.region_duals`), written to ``PROOF/certificate.dual``."""
    class_claim: ClassClaim | None = None

    @property
    def complete(self) -> bool:
        return not self.failed


def _retained_cut(
    imported: ImportedModel, x_train: NDArray[np.float32], forget: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Cut values ``[N, d]`` of the training rows kept by the request."""
    keep = np.ones(len(x_train), dtype=bool)
    keep[forget] = False
    x = x_train[keep]
    cut = x.reshape(len(x), -1) if imported.input_space else imported.cut_values(x)
    return np.asarray(cut, dtype=np.float64).reshape(len(x), -1)


def _check_options(
    solver: str, gate: str, policy: str, strategy: str, margin: float, n: float
) -> None:
    for kind, value, registry in (
        ("solver", solver, SOLVERS),
        ("gate", gate, {**GATES, AUTO: None}),
        ("target policy", policy, POLICY_NAMES),
        ("strategy", strategy, STRATEGIES),
    ):
        if value not in registry:
            raise PatchError(f"unknown {kind} {value!r} (choose {', '.join(registry)})")
    if not (np.isfinite(margin) and margin > 0):
        raise PatchError(f"the margin must be a positive number, got {margin}")
    if not (np.isfinite(n) and n > 0):
        raise PatchError(f"the support sharpness n must be a positive number, got {n}")


def unlearn(
    model: bytes,
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    *,
    forget_indices: Sequence[int] | NDArray[np.integer] | None = None,
    forget_class: int | None = None,
    class_mode: ClassMode = "suppress",
    class_margin: float = DEFAULT_CLASS_MARGIN,
    class_remap: bool = True,
    proxy_budget: int = DEFAULT_PROXY_BUDGET,
    x_test: NDArray[np.float32] | None = None,
    y_test: NDArray[np.int64] | None = None,
    solver: str = "lagrangian",
    solver_steps: int | None = None,
    gate: str = AUTO,
    target_policy: str | None = None,
    strategy: str = "individual",
    margin: float = DEFAULT_MARGIN,
    n: float = DEFAULT_N,
    cut: str | None = None,
    seed: int = 0,
    progress: bool = False,
    threads: int | None = None,
    prepared: PreparedReferences | None = None,
    calibration: str = "temperature",
    calibrated_tolerance: float = DEFAULT_TOLERANCE,
    box: InputBox | None = None,
    retained_accuracy: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> UnlearnResult:
    """Patch ``model`` (ONNX bytes) so that it forgets the requested training samples.

    ``solver_steps`` sets the lagrangian solver's dual-ascent steps (default
    :data:`DEFAULT_SOLVER_STEPS`, none): more steps size each constant patch by a tighter bound
    (a smaller push) and cost time (docs/BENCHMARKS.md, "The levers measured").
    ``threads`` caps torch's intra-op threads (restored afterwards) and onnxruntime's; on a
    loaded machine one thread is often much faster for the many small ops of the solver.
    ``target_policy`` defaults to :func:`prune.targets.default_policy` (``calibrated`` when
    ``prepared`` is given, else ``runner-up``).
    ``target_policy="calibrated"`` takes its targets from ``prepared`` (``prune prepare``,
    mapped with ``calibration``) or, without it, from the held-out ``x_test``/``y_test``;
    ``calibrated_tolerance`` is how far (logits) the true-class margin may rise above the
    target's anywhere in a patched region (:func:`prune.calibrate.calibrated_patches`).
    A ``forget_class`` is honoured as ``class_mode`` says (:data:`CLASS_MODES`); ``class_margin``
    is the suppression's logit gap; ``class_remap`` (form v2) remaps the rows the original gives
    the class to a proxy retrained without it within ``proxy_budget`` training samples (False:
    form v1, the original's other logits).

    ``box`` (sample deletion) is the declared input box of the cut space; default: from the
    training data's cut values (:func:`declare_box`, one onnxruntime pass over ``x_train`` for
    a model with a prefix). An owner serving many requests against one model computes it once
    and passes it (``summary.json``'s ``method.input_box``): it must contain every forget
    sample's cut value, and the auditor checks it against the reference data.
    ``retained_accuracy=False`` leaves out the accuracies on the retained training rows (two
    onnxruntime passes over ``x_train``): the summary then reports the forget rows and the test
    data only, with ``retain_*`` and ``train_*`` set to ``None``."""
    with _torch_threads(threads):
        started = clock()
        if class_mode not in CLASS_MODES:
            raise PatchError(f"unknown class mode {class_mode!r} (choose {', '.join(CLASS_MODES)})")
        target_policy = target_policy or default_policy(prepared=prepared is not None)
        _check_options(solver, gate, target_policy, strategy, margin, n)
        if solver_steps is None and solver == "lagrangian":
            solver_steps = DEFAULT_SOLVER_STEPS
        patch_solver = make_solver(solver, steps=solver_steps)
        imported = load_model(model, cut=cut)
        head = imported.head
        refusal = tree_refusal(imported.proto) if gate == TreeGate.name else None
        if refusal:
            raise PatchError(refusal)
        _check_inputs(imported, x_train, y_train, x_test, y_test)
        request = forget_request(
            y_train, forget_indices=forget_indices, forget_class=forget_class, classes=head.classes
        )
        x_train = np.ascontiguousarray(x_train, dtype=np.float32)
        if request.mode == "class" and target_policy == CALIBRATED:
            raise PatchError(
                "--target-policy calibrated is for sample deletion; a forgotten class has no "
                "per-sample out-model target (use --class-mode suppress)"
            )
        if request.mode == "class" and (box is not None or not retained_accuracy):
            raise PatchError(
                "a declared input box and leaving out the retained accuracy are for sample "
                "deletion (a class deletion declares its own box and measures the retained data)"
            )
        if request.mode == "class" and class_mode == "suppress":
            suppressed = suppress_class(
                imported,
                request,
                x_train,
                y_train,
                x_test,
                y_test,
                margin=class_margin,
                remap=class_remap,
                proxy_budget=proxy_budget,
                seed=seed,
                threads=threads,
                clock=clock,
                started=started,
            )
            return UnlearnResult(
                patched_model=suppressed.model,
                claims=suppressed.claims,
                method=suppressed.method,
                summary=suppressed.summary,
                forget_x=x_train[request.indices],
                forget_y=np.asarray(y_train, dtype=np.int64)[request.indices],
                forget_indices=request.indices,
                failed=suppressed.failed,
                class_claim=suppressed.claim,
            )
        forget_x = x_train[request.indices]
        forget_y = np.asarray(y_train, dtype=np.int64)[request.indices]

        box = box if box is not None else declare_box(imported, x_train)
        points, original_pred = forget_points(
            imported, forget_x, forget_y, request, margin, box, threads
        )
        outside = ~box.contains(points.x)
        if outside.any():
            raise PatchError(
                f"{int(outside.sum())} forget samples lie outside the declared input box "
                f"[{box.low:g}, {box.high:g}] (first leaf {int(np.flatnonzero(outside)[0])}); "
                "declare a box that contains them (the default is taken from the training data)"
            )
        ctx = SolveContext(
            head=head,
            box=box,
            solver=patch_solver,
            target_policy=target_policy,
            rng=np.random.default_rng(seed),
            progress=progress,
        )
        t_solve = clock()
        extra: dict[str, Any] = {}
        claims: tuple[Claim | CalibratedClaim, ...]
        if target_policy == CALIBRATED:
            goals = calibrated_targets(
                imported,
                points,
                request,
                forget_y,
                prepared=prepared,
                calibration=calibration,
                x_train=x_train,
                y_train=y_train,
                x_test=x_test,
                y_test=y_test,
                threads=threads,
            )
            t_export = clock()
            out = run_calibrated(
                imported,
                points,
                goals,
                request,
                forget_x,
                forget_y,
                original_pred,
                box=box,
                gate=gate,
                n=n,
                threads=threads,
                tolerance=calibrated_tolerance,
                retained=_retained_cut(imported, x_train, request.indices),
            )
            patched, ok, claims, gate = out.patched, out.ok, out.claims, out.gate
            n_patches, d_abs, resolved, rounds = out.patches, np.abs(out.d), 0, 1
            certified_min: float | None = None
            extra = {"calibrated": out.facts}
            duals: NDArray[np.float32] | None = out.duals
            t_duals = 0.0  # inside the calibrated solve
        else:
            plan = plan_patches(strategy, ctx, points)
            if len(plan.targets) == 0:
                raise PatchError("no forget point could be given a certified patch")
            gate = resolve_gate(gate, len(plan.targets), imported.proto)
            t_export = clock()
            patched, plan, ok, resolved = _export_and_recheck(
                imported,
                plan,
                ctx,
                gate=gate,
                n=n,
                margin=margin,
                forget_x=forget_x,
                threads=threads,
            )
            claims = _claims(request, forget_y, original_pred, plan, ok, margin)
            n_patches, d_abs, rounds = len(plan.targets), np.abs(plan.d), plan.rounds
            certified_min = float(plan.certified.min())
            t_duals = clock()
            duals = region_duals(
                head,
                box,
                active=plan.active,
                targets=plan.targets,
                C=plan.C,
                d=plan.d,
                claims=claims,
                exact=solver in LP_SOLVERS,  # their patches are sized to the exact LP optimum
                multipliers=plan.multipliers,
            )
            t_duals = clock() - t_duals
        t_evaluate = clock()

        rows = batch_rows(n_patches, head.classes, head.n_hidden, dense=gate == "dense")
        usefulness = _utility(
            imported,
            patched,
            x_train,
            y_train,
            x_test,
            y_test,
            request,
            rows=rows,
            threads=threads,
            retained=retained_accuracy,
        )
        failed = tuple(int(m) for m in np.flatnonzero(~ok))
        method = method_parameters(
            request,
            solver=solver,
            solver_options=ctx.solver.options(),
            gate=gate,
            policy=target_policy,
            strategy=strategy,
            margin=margin,
            n=n,
            slack=FLOAT32_SLACK,
            cut=head.cut,
            box=box,
            seed=seed,
        )
        if target_policy == CALIBRATED:
            method["targets"] = {
                "source": extra["calibrated"]["target_source"],
                "calibration": extra["calibrated"]["calibration"],
                "folds": None if prepared is None else prepared.folds,
                "tolerance": calibrated_tolerance,
            }
            if prepared is not None:
                extra["calibrated"]["prepare_seconds"] = prepared.seconds
        if request.mode == "class":
            method["class_mode"] = "regions"
        finished = clock()
        shared = shared_regions(points.active)
        summary: dict[str, Any] = {
            "version": 1,
            "mode": request.mode,
            "forget_class": request.forget_class,
            "forget_points": len(forget_y),
            **usefulness,
            "patches": n_patches,
            "certified": len(claims),
            "failed": list(failed),
            "shared_region_points": shared,
            "distinct_regions": len(set(map(bytes, np.packbits(points.active, axis=1)))),
            "resolved_after_recheck": resolved,
            "rounds": rounds,
            "patch_delta_mean": float(d_abs.max(axis=1).mean()),
            "certified_bound_min": certified_min,
            "seconds": finished - started,
            "seconds_prepare": t_solve - started,
            "seconds_solve": t_export - t_solve,
            "seconds_export_recheck": t_evaluate - t_export,
            "seconds_evaluate": finished - t_evaluate,
            "seconds_region_certificate": t_duals,
            "peak_rss_mb": peak_rss_mb(),
            **extra,
        }
        return UnlearnResult(
            patched_model=patched,
            claims=claims,
            method=method,
            summary=summary,
            forget_x=forget_x,
            forget_y=forget_y,
            forget_indices=request.indices,
            failed=failed,
            duals=duals,
        )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads and numpy's BLAS pool (the float64 bound passes, the
    Hamming distances of the target harmonisation, the routing tree) at ``threads`` for the
    call, restored afterwards; onnxruntime gets ``threads`` per session. Without the BLAS cap,
    OpenBLAS ran its own pool on every core beside the one-thread torch work (measured: the
    preparation's CPU time more than halves on the 2-core machine)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise PatchError(f"threads must be at least 1, got {threads}")
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def _check_inputs(
    imported: ImportedModel,
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    x_test: NDArray[np.float32] | None,
    y_test: NDArray[np.int64] | None,
) -> None:
    check_data(x_train, y_train, name="training data", input_shape=imported.input_shape)
    if x_test is not None or y_test is not None:
        check_data(x_test, y_test, name="test data", input_shape=imported.input_shape)
    classes = imported.head.classes
    for name, labels in (("training", y_train), ("test", y_test)):
        if labels is not None and int(labels.max()) >= classes:
            raise DataError(
                f"{name} label {int(labels.max())} is not a class of the model (0..{classes - 1})"
            )


def _utility(
    imported: ImportedModel,
    patched: bytes,
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    x_test: NDArray[np.float32] | None,
    y_test: NDArray[np.int64] | None,
    request: ForgetRequest,
    *,
    rows: int,
    threads: int | None,
    retained: bool = True,
) -> dict[str, Any]:
    """Accuracies of the original and the patched model (onnxruntime) on train and test;
    without ``retained``, on the forget rows of the training data only (the retained and
    whole-training-set figures are then ``None``)."""
    output = imported.head.output
    if not retained:
        forget_rows = np.asarray(request.indices, dtype=np.int64)
        x_train = x_train[forget_rows]
        y_train = np.asarray(y_train, dtype=np.int64)[forget_rows]
        request = dataclasses.replace(request, indices=np.arange(len(forget_rows)))
    before = predictions(imported.raw, output, x_train, rows=4096, threads=threads)
    after = predictions(patched, OUTPUT, x_train, rows=rows, threads=threads)
    test = None
    if x_test is not None and y_test is not None:
        x_te = np.ascontiguousarray(x_test, dtype=np.float32)
        test = (
            predictions(imported.raw, output, x_te, rows=4096, threads=threads),
            predictions(patched, OUTPUT, x_te, rows=rows, threads=threads),
            np.asarray(y_test, dtype=np.int64),
        )
    out = utility(
        before=before,
        after=after,
        y=np.asarray(y_train, dtype=np.int64),
        forget_rows=request.indices,
        test=test,
        classes=imported.head.classes,
    )
    if not retained:
        for key in (
            "retain_accuracy_before",
            "retain_accuracy_after",
            "train_accuracy_before",
            "train_accuracy_after",
            "retain_prediction_changes",
        ):
            out[key] = None
    out["retained_accuracy_measured"] = retained
    return out


def _claims(
    request: ForgetRequest,
    forget_y: NDArray[np.int64],
    original_pred: NDArray[np.int64],
    plan: Plan,
    ok: NDArray[np.bool_],
    margin: float,
) -> tuple[Claim, ...]:
    """One claim per forget sample that passed the onnxruntime re-check, in leaf order."""
    return tuple(
        Claim(
            leaf_index=m,
            train_index=int(request.indices[m]),
            label=int(forget_y[m]),
            original_prediction=int(original_pred[m]),
            target=int(plan.targets[plan.patch_of[m]]),
            patch=int(plan.patch_of[m]),
            certified_margin=float(margin),
            region="certified",
        )
        for m in range(len(forget_y))
        if ok[m]
    )


def _export_and_recheck(
    imported: ImportedModel,
    plan: Plan,
    ctx: SolveContext,
    *,
    gate: str,
    n: float,
    margin: float,
    forget_x: NDArray[np.float32],
    threads: int | None,
) -> tuple[bytes, Plan, NDArray[np.bool_], int]:
    """Export, replay the forget points with onnxruntime, re-solve failing patches with a larger
    margin; returns the model, the final plan, per-point success and the re-solve count."""
    resolved = 0
    required = plan.required.copy()
    lam = None if plan.multipliers is None else plan.multipliers.copy()
    d, C, certified = (
        plan.d.copy(),
        None if plan.C is None else plan.C.copy(),
        plan.certified.copy(),
    )
    for attempt in range(RETRIES + 1):
        patches = PatchSet(
            gate=gate,
            n=n,
            active=plan.active,
            d=d,
            C=C,
            K=patch_bounds(C, d, ctx.box),
            targets=plan.targets,
        )
        patched = export_patched(imported, patches, ctx.box)
        rows = batch_rows(len(d), d.shape[1], imported.head.n_hidden, dense=gate == "dense")
        runner = OrtRunner(patched, outputs=[OUTPUT], threads=threads)
        logits = runner.run(forget_x, batch_size=rows)[0]
        has = plan.patch_of >= 0
        target = np.where(has, plan.targets[np.maximum(plan.patch_of, 0)], 0)
        ok = has & (logits.argmax(axis=1) == target) & (margins_at(logits, target) >= margin)
        bad = np.unique(plan.patch_of[has & ~ok])
        if len(bad) == 0 or attempt == RETRIES:
            break
        resolved += len(bad)
        required[bad] = required[bad] + (margin + required[bad]) * 2.0**attempt
        again = solve_with_duals(ctx, plan.active[bad], plan.targets[bad], required[bad])
        C_b, d[bad], certified[bad] = again.C, again.d, again.certified
        if lam is not None and again.multipliers is not None:
            lam[bad] = again.multipliers
        else:
            lam = None
        if C_b is not None:
            C = np.zeros((len(d), *C_b.shape[1:])) if C is None else C
            C[bad] = C_b
        elif C is not None:
            C[bad] = 0.0
    final = Plan(
        plan.active,
        plan.targets,
        C,
        d,
        certified,
        required,
        plan.patch_of,
        plan.rounds,
        multipliers=lam,
    )
    return patched, final, ok, resolved
