"""Two patches on one linear region (threat 21): every claim certified, the original label served.

``region.certificate`` proves each claim for ``f + p_u`` on the points of ``S_u`` where the
served gates are ``g_u = 1`` and ``g_v = 0`` for every other patch ``v``. With distinct
activation patterns the other gates are on only in a thin band, so that set is (almost) all of
``S_u``. The owner breaks the premise: it fabricates a *decoy* leaf (decoys are the owner's own
choice, committed next to the requests, and no data subject holds their receipts) at a point
``x2`` of a requester's region ``S`` and gates a second patch ``v`` on the same pattern. Both
gates are then fully on over all of ``S`` and the served model there is ``f + p_u + p_v``,
which no certificate speaks about.

The two constant patches are chosen so that each *alone* certifies its claim with a huge lead
(``p_u``: the requester's target ``t``; ``p_v``: the requester's own label ``y``, the decoy
labelled ``t``), while their sum ``D = p_u + p_v`` is an arbitrary shift: ``f + D`` serves
``t`` on the part of ``S`` towards the requester's sample and ``y`` (the original label) on the
part towards the decoy. The hyperplane between them sits a quarter of the way, in the logit
gap ``f_t - f_y``, from the requester's side to the decoy, beyond both the requester's sample
and the vertex that the probes' exact LP minimises for the requester's claim (a third class
``s`` is given the smallest lead, so the LP's optimum is that class's vertex, on ``t``'s side),
so the probes, which sample near the samples, see only the claimed targets. Main's verifier
(before ``structure.patch`` refused two patches on one pattern) returned VERIFIED on digits
seed 0 (verifier seeds 1-6); the served model gives the requester's original label on part of
the certified region."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from prune.claims import Claim
from prune.export import export_patched
from prune.model import ImportedModel, OrtRunner, load_model
from prune.patched import PatchSet, patch_bounds
from prune.proofs._duals import region_duals
from prune.regions import InputBox, Regions, linearize
from prune.solvers import LagrangianSolver
from threat_models.adversaries._base import (
    Adversary,
    DishonestProof,
    first_requester,
    signed,
    standard,
)
from threat_models.adversaries._residual import _input_box, _patterns
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = ["SharedRegion"]

F64 = NDArray[np.float64]
LEAD = 1.0
"""Logits by which each claim's own patch leads its LP class beyond the margin (dual slack)."""
FAR, NEAR, PUSH, PULL = 100.0, 50.0, 200.0, 400.0
"""Served shift of the classes that must never win (``FAR``; the LP class ``NEAR``), and each
patch's own lead of its target over the other claim's target (``PUSH``, ``PULL``)."""
SEGMENT = 21
"""Points on the segment from the requester's sample to the decoy where the label is counted."""
WHAT = "shared region"


def region_lp(regions: Regions, c: F64, box: tuple[float, float], what: str) -> F64:
    """``argmin_{x in S} c . x`` (scipy HiGHS); ``what`` names the adversary in the error."""
    from scipy.optimize import linprog

    G, h = (t[0].numpy() for t in regions.constraints())
    res = linprog(c, A_ub=G, b_ub=h, bounds=[box] * G.shape[1], method="highs")
    if res.status != 0:
        raise ScenarioError(f"{what}: the LP failed ({res.message})")
    return np.asarray(res.x, dtype=np.float64)


def decoy_inputs(
    scenario: Scenario,
) -> tuple[dict[str, NDArray[Any]], list[Claim], list[Claim]]:
    """The honest patch parameters (by name), its flip claims, and the requesters a decoy can
    be built next to: ordinary leaves whose patch is their own, in leaf order."""
    import onnx
    from onnx import numpy_helper

    params = {
        t.name.removeprefix("prune/patch/"): numpy_helper.to_array(t)
        for t in onnx.load_from_string(scenario.honest.patched_model).graph.initializer
    }
    claims = [c for c in scenario.honest.claims if isinstance(c, Claim)]
    owners = [c.patch for c in claims]
    ordinary = {int(i) for i in scenario.ordinary_leaves()}
    candidates = [c for c in claims if c.leaf_index in ordinary and owners.count(c.patch) == 1]
    return params, claims, candidates


def opposed_pushes(
    regions: Regions,
    d0: F64,
    pick: Claim,
    x1: F64,
    on_y: float,
    lim: tuple[float, float],
    what: str,
) -> F64:
    """The honest constant patches ``d0`` with the requester's (``pick``: patch ``u``, label
    ``y``, target ``t``) changed and a decoy patch appended (target ``y``), each certified for
    its own claim alone by a lead of hundreds of logits, whose sum on the requester's region
    ``S`` serves ``f_t - f_y`` shifted to a quarter of its range on ``t``'s side: ``t`` at the
    requester's sample ``x1``, ``y`` where the gap is ``on_y`` (the decoy's side). A third
    class ``s`` gets the smallest lead, so that an exact LP lands on ``t``'s side."""
    u, y, t = pick.patch, pick.label, pick.target
    F1, F2 = regions.F1[0].numpy(), regions.F2[0].numpy()

    def gap(x: F64) -> float:  # f_t - f_y on S
        return float((F1[t] - F1[y]) @ x + F2[t] - F2[y])

    best: tuple[float, int, float] | None = None
    for s in (j for j in range(d0.shape[1]) if j not in (y, t)):
        on_t = min(gap(region_lp(regions, F1[t] - F1[s], lim, what)), gap(x1))
        if best is None or on_t - on_y > best[0]:
            best = (on_t - on_y, s, on_t)
    assert best is not None
    width, s, on_t = best
    if width < 4.0 * pick.certified_margin + 1.0:
        raise ScenarioError(f"{what}: the region is too narrow to split")
    shift = 0.25 * width - on_t  # the served gap f_t - f_y + shift: a quarter on t's side
    served = np.full(d0.shape[1], -FAR)
    served[t], served[y], served[s] = shift, 0.0, -NEAR
    dv = np.zeros(d0.shape[1])
    dv[y], dv[t] = PUSH, -PULL
    low = region_lp(regions, F1[t] - F1[s], lim, what)
    lowest = float((F1[t] - F1[s]) @ low + F2[t] - F2[s])
    dv[s] = pick.certified_margin + LEAD - lowest - (shift + PULL + NEAR)
    d = np.concatenate([d0, dv[None]])
    d[u] = served - dv
    return d


def decoy_outcome(
    scenario: Scenario,
    imported: ImportedModel,
    claims: list[Claim],
    decoy: Claim,
    d: F64,
    active: NDArray[np.bool_],
    n: float,
    x2: F64,
) -> tuple[bytes, Outcome]:
    """The patched model (activation gate, constant patches ``d`` on patterns ``active``) and
    the honest outcome with the decoy claim and sample (``x2``) added, every claim certified
    for its own patch (``region_duals``)."""
    honest = scenario.honest
    box = _input_box(honest.method)
    shape = honest.forget_x.shape[1:]
    own = (next(c.target for c in claims if c.patch == p) for p in range(len(d) - 1))
    targets = np.array([*own, decoy.target])
    every = (*claims, decoy)
    patches = PatchSet(
        gate="activation",
        n=n,
        active=active,
        d=d,
        C=None,
        K=patch_bounds(None, d, box),
        targets=targets,
    )
    model = export_patched(imported, patches, box)
    duals = region_duals(
        imported.head,
        box,
        active=active,
        targets=targets,
        C=None,
        d=d,
        claims=every,
        solver=LagrangianSolver(steps=400, lr=0.03, scales="exact"),
    )
    outcome = Outcome.of(honest).but(
        patched_model=model,
        claims=every,
        forget_x=np.concatenate([honest.forget_x, x2.astype(np.float32).reshape(1, *shape)]),
        forget_y=np.concatenate([honest.forget_y, [decoy.label]]).astype(np.int64),
        duals=duals,
    )
    return model, outcome


class SharedRegion(Adversary):
    """A decoy leaf in a requester's region with a second patch on the same pattern (see the
    module docstring); every other patch and claim is the honest one."""

    name: ClassVar[str] = "shared_region"
    architectures: ClassVar[frozenset[str]] = frozenset({"mlp"})  # decoy built in input space
    threat: ClassVar[Threat | None] = threat("shared-region")
    summary: ClassVar[str] = "decoy patch on a requester's region: the pushes cancel there"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        if honest.method.get("gate") != "activation" or not honest.complete:
            raise ScenarioError("shared region needs a complete, activation-gated honest run")
        imported = load_model(scenario.original_bytes)
        if not imported.input_space:
            raise ScenarioError("shared region: the decoy is built in input space (an MLP)")
        box = _input_box(honest.method)
        params, claims, candidates = decoy_inputs(scenario)

        def attempt(pick: Claim) -> DishonestProof:
            return self._build_on(scenario, out, imported, box, params, claims, pick)

        return first_requester(candidates, attempt, WHAT)

    def _build_on(
        self,
        scenario: Scenario,
        out: Path,
        imported: ImportedModel,
        box: InputBox,
        params: dict[str, NDArray[Any]],
        claims: list[Claim],
        pick: Claim,
    ) -> DishonestProof:
        """The decoy on ``pick``'s region; :class:`ScenarioError` when that region cannot
        hold it (the caller tries the next requester)."""
        honest = scenario.honest
        d0 = np.asarray(params["d"], dtype=np.float64)
        active0 = np.asarray(params["pos"]).T.astype(bool)
        u, y, t = pick.patch, pick.label, pick.target
        shape = honest.forget_x.shape[1:]
        x1 = honest.forget_x[pick.leaf_index].reshape(-1).astype(np.float64)
        regions = linearize(imported.head, active0[u][None], box=box)
        F1, F2 = regions.F1[0].numpy(), regions.F2[0].numpy()
        lim = (box.low, box.high)
        far = region_lp(regions, F1[t] - F1[y], lim, WHAT)  # the vertex most on y's side
        x2 = x1 + 0.9 * (far - x1)
        if not np.array_equal(
            _patterns(imported, x2.astype(np.float32).reshape(1, *shape))[0], active0[u]
        ):
            raise ScenarioError("shared region: the decoy point left the region")
        on_y = float((F1[t] - F1[y]) @ x2 + F2[t] - F2[y])
        d = opposed_pushes(regions, d0, pick, x1, on_y, lim, WHAT)
        decoy = Claim(
            leaf_index=len(claims),
            train_index=-1,
            label=t,
            original_prediction=y,
            target=y,
            patch=len(d0),
            certified_margin=pick.certified_margin,
            region="certified",
        )
        active = np.concatenate([active0, active0[u][None]])
        model, outcome = decoy_outcome(
            scenario, imported, claims, decoy, d, active, float(params["n"]), x2
        )
        served_y = self._served_label(imported, model, x1, x2, active0[u], y, shape)
        proof = signed(scenario, out / "proof", outcome)
        return standard(
            self,
            scenario,
            out,
            proof,
            f"decoy leaf {len(claims)} in the region of leaf {pick.leaf_index} (patch {u}), "
            f"second patch {len(d0)}: {served_y} of {SEGMENT} points of the certified region "
            f"(segment from the requester to the decoy) served their original label {y}",
        )

    @staticmethod
    def _served_label(
        imported: ImportedModel,
        model: bytes,
        x1: F64,
        x2: F64,
        pattern: NDArray[np.bool_],
        label: int,
        shape: tuple[int, ...],
    ) -> int:
        """How many of :data:`SEGMENT` points from the requester's sample to the decoy, each in
        the requester's region (the original's own pattern, checked), the served model gives
        the requester's original ``label``."""
        steps = np.linspace(0.0, 1.0, SEGMENT)[:, None]
        points = (x1[None] + steps * (x2 - x1)[None]).astype(np.float32).reshape(-1, *shape)
        inside = (_patterns(imported, points) == pattern[None]).all(axis=1)
        if not inside.all():
            raise ScenarioError("shared region: a point between the two samples left the region")
        logits = OrtRunner(model, outputs=["prune/output"]).run(points)[0]
        return int((logits.argmax(axis=1) == label).sum())
