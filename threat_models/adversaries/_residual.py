"""Residual memorisation: every claim is true and certified over the whole region, yet the
model still remembers the forgotten records.

The owner replaces each constant PRUNE patch by the *tie patch*, an affine patch that on the
region makes the target logit equal to the true label's logit plus the margin,
``(f + p)_t = f_y + m``, and lowers every other class just enough (by the exact LP minimum of
``f_y - f_j`` over the region) that it never overtakes. Over the whole region the model then
predicts the claimed target with the claimed margin (``region.probes`` and its LP agree), the
gate is the genuine region (``structure.patch``), nothing else changes (``locality``,
``utility``). But the true label stays a near-tie runner-up: ``p(y | x) ~ 1/2`` at every
forgotten record.

Why that is membership, not just a small margin: the auditor measures it on its canaries,
noise images with random labels that no model predicts without having memorised them. A model
that never saw a canary gives its label about 1/10; the original gives it ~1 (memorised); the
honest patch, sized for the worst case of the region, leaves ``p(y)`` far below the held-out
canaries' (the record looks *deleted*); the tie patch leaves ``p(y) ~ 1/2``, far above the
held-out canaries' - the forgotten canaries still stand out as members. The honest owner cannot
do this by accident: the engine never produces affine patches with ``C`` tied to ``f_y``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
from numpy.typing import NDArray

from prune.calibrate import CalibratedTargets
from prune.claims import Claim
from prune.errors import PruneError
from prune.export import export_patched
from prune.model import ImportedModel, OrtRunner, load_model
from prune.patched import PatchSet, patch_bounds
from prune.proofs._duals import float32_logit_error, region_duals
from prune.regions import InputBox, Regions, linearize
from prune.solvers import LagrangianSolver
from prune.unlearn import FLOAT32_SLACK, unlearn
from threat_models.adversaries._base import Adversary, DishonestProof, signed, standard
from threat_models.adversaries._onnx import cut_values
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = ["CalibratedZeroPush", "ResidualMemorisation", "tie_patches"]

F64 = NDArray[np.float64]
ATTEMPTS = 4


def _lowest_gap(regions: Regions, u: int, y: int, j: int) -> float:
    """``min_{x in S_u} (f_y - f_j)(x)`` by LP (scipy HiGHS) over the region and its box."""
    from scipy.optimize import linprog

    G, h = (t[u].numpy() for t in regions.constraints())
    F1, F2 = regions.F1[u].numpy(), regions.F2[u].numpy()
    box = regions.box
    result = linprog(
        F1[y] - F1[j],
        A_ub=G,
        b_ub=h,
        bounds=[(box.low, box.high)] * G.shape[1],
        method="highs",
    )
    if result.status != 0:
        raise ScenarioError(f"tie patch: the LP over region {u} failed ({result.message})")
    return float(result.fun + F2[y] - F2[j])


TIE_ROOM = 0.25
"""Logits by which the target leads the label beyond the claimed margin (a near-tie)."""


def tie_patches(
    regions: Regions, labels: NDArray[np.int64], targets: NDArray[np.int64], margins: F64
) -> tuple[F64, F64]:
    """Affine patches ``(C [P,d,O], d [P,O])``: on region ``u``, ``(f+p)_t = f_y + m_u`` and
    every other class ``j`` lowered by ``max(0, -min_S (f_y - f_j)) + m_u``, so that the target
    leads every class by at least ``m_u`` on the whole region and the label by exactly
    ``m_u + TIE_ROOM`` (room for the owner's inexact dual multipliers)."""
    patches, classes, dim = regions.F1.shape
    C = np.zeros((patches, dim, classes))
    d = np.zeros((patches, classes))
    F1, F2 = regions.F1.numpy(), regions.F2.numpy()
    for u in range(patches):
        y, t = int(labels[u]), int(targets[u])
        C[u, :, t] = F1[u, y] - F1[u, t]
        d[u, t] = F2[u, y] - F2[u, t] + margins[u] + TIE_ROOM
        for j in range(classes):
            if j not in (y, t):
                # lowered by a further m_u: slack on these rows, so that the owner's dual
                # multipliers (not exact LP duals) prove them; the label row stays a tie
                d[u, j] = -max(0.0, -_lowest_gap(regions, u, y, j)) - margins[u]
    return C, d


def _input_box(method: dict[str, object]) -> InputBox:
    box = method["input_box"]
    if not isinstance(box, dict):
        raise ScenarioError("the honest run declares no input box")
    return InputBox(low=float(box["low"]), high=float(box["high"]), source=str(box["source"]))


def _patterns(model: ImportedModel, x: NDArray[np.float32]) -> NDArray[np.bool_]:
    outs = OrtRunner(model.raw, outputs=list(model.head.hidden)).run(x)
    return np.concatenate([o.reshape(len(x), -1) for o in outs], axis=1) >= 0


class ResidualMemorisation(Adversary):
    """Tie patches (see the module docstring) with the honest run's targets, margin and gate;
    claims identical to the honest ones."""

    name: ClassVar[str] = "residual_memorisation"
    threat: ClassVar[Threat | None] = threat("residual-memorisation")
    summary: ClassVar[str] = "certified tie patches: p(true label) stays ~1/2"
    counterpart: ClassVar[str | None] = "class_residual"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        if honest.method.get("gate") != "activation" or not honest.complete:
            raise ScenarioError("the tie patch needs a complete, activation-gated honest run")
        imported = load_model(scenario.original_bytes)
        box = _input_box(honest.method)
        x = cut_values(scenario, honest.forget_x)  # the head's input
        flip = tuple(c for c in honest.claims if isinstance(c, Claim))
        if len(flip) != len(honest.claims):
            raise ScenarioError("the tie patch needs flip claims (a class-choosing target policy)")
        claims = sorted(flip, key=lambda c: c.patch)
        first = {c.patch: c for c in reversed(claims)}  # one owner per patch (first claim)
        owners = [first[u] for u in range(len(first))]
        active = _patterns(imported, honest.forget_x[[c.leaf_index for c in owners]])
        regions = linearize(imported.head, active, box=box)
        labels = np.array([c.label for c in owners], dtype=np.int64)
        targets = np.array([c.target for c in owners], dtype=np.int64)
        logits, _ = imported.head.forward(x[[c.leaf_index for c in owners]].astype(np.float64))
        # the honest owner's float32 budget: relative slack plus the rigorous rounding bound
        rigorous = 2.0 * float32_logit_error(imported.head, active, box).max(axis=1)
        slack = FLOAT32_SLACK * (1.0 + np.abs(logits).max(axis=1)) + rigorous
        margins = scenario.config.margin + slack
        for _ in range(ATTEMPTS):
            C, d = tie_patches(regions, labels, targets, margins)
            patches = PatchSet(
                gate="activation",
                n=float(honest.method["n"]),
                active=active,
                d=d,
                C=C,
                K=patch_bounds(C, d, box),
                targets=targets,
            )
            model = export_patched(imported, patches, box)
            short = self._short(model, honest.forget_x, flip)
            if not short.any():
                break
            margins = margins + short * (scenario.config.margin + slack)
        else:
            raise ScenarioError("tie patches do not hold their margin in float32")
        # the tie patches are certified over their regions too: ship their own multipliers
        # (tight rows: many more dual steps than the engine's default)
        duals = region_duals(
            imported.head,
            box,
            active=active,
            targets=targets,
            C=C,
            d=d,
            claims=flip,
            solver=LagrangianSolver(steps=400, lr=0.03, scales="exact"),
        )
        outcome = Outcome.of(honest).but(patched_model=model, duals=duals)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, "affine tie patches, honest claims")

    @staticmethod
    def _short(model: bytes, x: NDArray[np.float32], claims: tuple[Claim, ...]) -> F64:
        """Per patch: 1.0 where a claimed point misses its margin on the exported model."""
        logits = OrtRunner(model, outputs=["prune/output"]).run(x)[0].astype(np.float64)
        patches = 1 + max(c.patch for c in claims)
        short = np.zeros(patches)
        for c in claims:
            row = logits[c.leaf_index]
            others = np.delete(row, c.target)
            if row.argmax() != c.target or row[c.target] - others.max() < c.certified_margin:
                short[c.patch] = 1.0
        return short


class CalibratedZeroPush(Adversary):
    """A ``calibrated`` proof whose targets are the original's own outputs.

    A ``calibrated`` claim states the output a model that never saw the sample would give, with
    the owner's reference models as the only witness of that number (docs/VERIFY.md, "What
    VERIFIED does not prove on its own"). This owner runs the engine's calibrated policy with
    the targets replaced by the original's logits at the forget points: every patch is a zero
    push, every obligation (declared output, upper margin over the region) holds for the
    original itself, and the model keeps everything it memorised. Only the auditor's own
    membership measurement can tell: the planted canaries keep ``p(label) ~ 1``, far above the
    held-out canaries'."""

    name: ClassVar[str] = "calibrated_zero_push"
    threat: ClassVar[Threat | None] = threat("zero-push")
    summary: ClassVar[str] = "calibrated claims whose targets are the original's outputs"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        if scenario.forget_class is not None:
            raise ScenarioError("calibrated targets are per sample; this scenario deletes a class")
        import prune.unlearn._pipeline as pipeline

        def own_outputs(_imported: object, points: Any, *_a: object, **_k: object) -> Any:
            logits = np.asarray(points.logits, dtype=np.float64)
            return CalibratedTargets(logits=logits, source="class-conditional", calibration="none")

        with mock.patch.object(pipeline, "calibrated_targets", own_outputs):
            try:
                result = unlearn(
                    scenario.original_bytes,
                    scenario.x_train,
                    scenario.y_train,
                    forget_indices=scenario.forget_rows,
                    x_test=scenario.x_test,
                    y_test=scenario.y_test,
                    target_policy="calibrated",
                    seed=scenario.seed,
                )
            except PruneError as exc:
                raise ScenarioError(f"the zero-push calibrated run failed: {exc}") from exc
        proof = signed(scenario, out / "proof", Outcome.of(result))
        return standard(
            self, scenario, out, proof, f"{len(result.claims)} calibrated claims, zero push"
        )
