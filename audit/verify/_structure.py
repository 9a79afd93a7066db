"""White-box structure checks.

``structure.original``: the patched graph contains the committed original graph byte for byte
(nodes in order, initializers, inputs, opsets, functions).

``structure.patch``: what was added is a patch of the declared form, and nothing else:

1. the graph rules of :func:`~audit.verify._graph.patch_form_problems` (one output, metadata
   that matches the original graph, allowed piecewise-linear ops reading only the cut, the hidden
   tensors, the original logits and patch constants);
2. the parameters have the shapes the original model implies and match the certificate (gate
   kind, cut, every patch owned by some claim, every claim's patch index in range), and the
   gate sharpness ``n`` is at least ``Policy.min_gate_sharpness`` (the band ``1/n`` bounds the
   one exception of ``region.certificate``: another patch's gate on inside a region);
3. each claim's gate row is *the region of the claimed forget sample*, computed by the verifier
   on the original model (activation gate: the sign pattern; dense gate: the linearised
   constraint rows). A patch gated on anything else is a trigger, not an unlearning patch
   and no two patches share one region (both gates would be fully on over it, where no
   claim's certificate speaks: threat 21, ``shared_region``);
4. numeric agreement: onnxruntime's patched head equals ``original + sum_u h_u`` evaluated with
   the verifier's own numpy code on the forget samples (256 at random when there are more) and
   on jittered copies of them.

Limitation (documented): (4) is agreement on sampled points, made meaningful by (1), which only
admits continuous piecewise-linear patch subgraphs; it is not a symbolic proof."""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.verify._bands import PAIR_BLOCK, gate_patterns, mismatches, wide_band
from audit.verify._canonical import (
    GATE_FORMS,
    TAIL_FORMS,
    PatchSpec,
    canonical_patch,
    compare_patch_graph,
    expected_metadata,
    gate_linear,
)
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._graph import TAIL_FORM, match_original_nodes, metadata, original_problems
from audit.verify._probes import input_box
from audit.verify._replay import patch_arrays

__all__ = ["StructureOriginal", "StructurePatch"]

_SIGN_TOLERANCE = 1e-6  # |z| below this may legitimately round either way in float32
_ROW_TOLERANCE = 1e-4  # float32 storage of float64 constraint rows (relative)
_FORM_TOLERANCE = 1e-4  # float32 execution of the patch formula (relative)
_FORM_POINTS = 256  # forget samples (at random beyond this) and as many jittered copies


def _summarise(problems: list[str]) -> str:
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


class StructureOriginal(Check[VerifyContext]):
    name = "structure.original"
    summary = "model.onnx contains every node and initializer of --original, byte for byte"
    requires = frozenset({"original"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        original, patched = ctx.original_proto(), ctx.patched_proto()
        problems = original_problems(original, patched)
        evidence = {
            "original_nodes": len(original.graph.node),
            "patched_nodes": len(patched.graph.node),
            "original_initializers": len(original.graph.initializer),
            "problems": problems[:20],
        }
        if problems:
            return self.failed(_summarise(problems), **evidence)
        return self.passed(
            f"all {len(original.graph.node)} nodes and {len(original.graph.initializer)} "
            "initializers of the original are unchanged",
            **evidence,
        )


class StructurePatch(Check[VerifyContext]):
    name = "structure.patch"
    summary = (
        "the added subgraph has the declared patch form, each claim's gate is the region of its "
        "forget sample (computed by the verifier), and the patch computes the declared formula"
    )
    requires = frozenset({"original", "forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        if ctx.predicate.class_claim is not None:  # another patch form, rebuilt exactly there
            return self.not_applicable(
                "class suppression: the form is checked by class.suppression"
            )
        head = ctx.head()
        method = ctx.predicate.method
        params = ctx.patch()
        problems: list[str] = []
        if method.get("gate") != params.gate:
            problems.append(f"certificate gate {method.get('gate')!r}, model gate {params.gate!r}")
        if (
            "cut" in method
            and method["cut"] != head.cut
            and not (method["cut"] in (None, "", "input") and head.cut == head.input)
        ):
            problems.append(f"certificate cut {str(method['cut'])[:40]!r}, model cut {head.cut!r}")
        openings = ctx.openings()
        ev = ctx.evaluate(openings.x, key="forget")
        problems += params.check_dims(
            cut_dim=ev.x.shape[1], hidden=ev.z.shape[1], classes=ev.logits.shape[1]
        )
        sharpness = ctx.policy.min_gate_sharpness
        if not params.n >= sharpness:
            problems.append(
                f"gate sharpness n = {params.n:g} is below the policy minimum {sharpness:g}: the "
                "band where another patch may fire inside a certified region would not be thin"
            )
        evidence: dict[str, Any] = {
            "gate": params.gate,
            "patches": params.patches,
            "hidden": int(ev.z.shape[1]),
            "cut_dim": int(ev.x.shape[1]),
            "n": params.n,
        }
        if problems:
            return self.failed(_summarise(problems), problems=problems[:20], **evidence)
        problems = canonical_problems(ctx, params, ev.x.shape[1], ev.z.shape[1])
        evidence["canonical"] = not problems
        if problems:
            return self.failed(
                f"patch graph is not the canonical form: {_summarise(problems)}",
                problems=problems[:20],
                **evidence,
            )
        cols = patch_arrays(ctx.predicate.claims)
        rows = np.searchsorted(openings.leaf_index, cols["leaf"]).clip(0, len(openings) - 1)
        if (cols["patch"] >= params.patches).any():
            return self.failed(f"a claim names a patch outside [0, {params.patches})", **evidence)
        unowned = sorted(set(range(params.patches)) - set(cols["patch"].tolist()))
        if unowned:
            return self.failed(
                f"{len(unowned)} patches belong to no claimed forget sample (first: patch "
                f"{unowned[0]}): an unexplained patch region",
                **evidence,
            )
        region_problem = self._regions(ctx, ev.x[rows], ev.z[rows], cols["patch"], evidence)
        if region_problem:
            return self.failed(region_problem, **evidence)
        form_problem = self._formula(ctx, ev.x[rows], ev.extra["cut_shape"], evidence)
        if form_problem:
            return self.failed(form_problem, **evidence)
        return self.passed(
            f"{params.patches} {params.gate}-gated patches, each on the region of its claimed "
            f"forget sample; formula agrees within {evidence['formula_error']:.2g}",
            **evidence,
        )

    def _regions(
        self, ctx: VerifyContext, x: Any, z: Any, patch: Any, evidence: dict[str, Any]
    ) -> str | None:
        params = ctx.patch()
        z = z.astype(np.float64)
        if params.gate == "activation" or params.routed:  # routed: patterns into pos/neg
            assert params.pos is not None and params.neg is not None
            pos, neg = params.pos[:, patch].T, params.neg[:, patch].T  # [claims, H]
            if not np.array_equal(pos + neg, np.ones_like(pos)):
                bad = int(np.flatnonzero((pos + neg != 1).any(axis=1))[0])
                return (
                    f"gate of patch {int(patch[bad])} does not fix the sign of every hidden "
                    "neuron: not a linear region"
                )
            wrong = ((pos == 1) & (z < -_SIGN_TOLERANCE)) | ((neg == 1) & (z > _SIGN_TOLERANCE))
            evidence["sign_ties"] = int((np.abs(z) <= _SIGN_TOLERANCE).sum())
        else:
            affine = ctx.affine_head()
            assert params.A is not None and params.b is not None
            hidden = z.shape[1]
            wrong = np.zeros_like(z, dtype=bool)
            for i in range(len(x)):
                rows, offs, _, _ = affine.local_affine(x[i].astype(np.float64))
                sign = np.where(z[i] >= 0, -1.0, 1.0)
                want_a, want_b = rows * sign[:, None], -offs * sign
                u = int(patch[i])
                got_a = params.A[:, u * hidden : (u + 1) * hidden].T
                got_b = params.b[u * hidden : (u + 1) * hidden]
                scale = 1.0 + np.abs(want_a).max(axis=1) + np.abs(want_b)
                err = np.maximum(np.abs(got_a - want_a).max(axis=1), np.abs(got_b - want_b))
                wrong[i] = (err > _ROW_TOLERANCE * scale) & (np.abs(z[i]) > _SIGN_TOLERANCE)
        evidence["gate_mismatches"] = int(wrong.sum())
        if wrong.any():
            claim = int(np.flatnonzero(wrong.any(axis=1))[0])
            return (
                f"gate of patch {int(patch[claim])} is not the region of its claimed forget "
                f"sample ({int(wrong[claim].sum())} neurons differ): a patch gated on something else"
            )
        shared = _shared_region(params, z, patch, flat=_flat_neurons(ctx, x, z))
        if shared or params.routed:  # routed: one patch per input, no band
            return shared
        return _band_problem(ctx, params, x, z, patch)

    def _formula(
        self, ctx: VerifyContext, x: Any, cut_shape: tuple[int, ...], evidence: dict[str, Any]
    ) -> str | None:
        params = ctx.patch()
        if len(x) > _FORM_POINTS:
            x = x[np.sort(ctx.rng.choice(len(x), _FORM_POINTS, replace=False))]
        noise = ctx.rng.normal(scale=0.05, size=x.shape) * (1.0 + np.abs(x))
        points = np.concatenate([x, x + noise]).astype(np.float32)
        z, logits = ctx.original_head(points, cut_shape)
        base = logits.astype(np.float64)
        want = base + params.delta(
            x=points.astype(np.float64),
            g=params.gates(z=z.astype(np.float64), x=points.astype(np.float64)),
        )
        got = ctx.patched_head(points, cut_shape).astype(np.float64)
        scale = 1.0 + max(float(np.abs(want).max()), float(params.K.max(initial=0.0)))
        error = float(np.abs(got - want).max()) / scale
        evidence["formula_error"] = error
        evidence["formula_points"] = len(points)
        if error > _FORM_TOLERANCE:
            return (
                f"the patch subgraph does not compute the declared formula (relative error "
                f"{error:.3g} on {len(points)} points)"
            )
        return None


def _flat_neurons(ctx: VerifyContext, x: Any, z: Any) -> Any:
    """``[claims, H]``: the neurons that are 0 (within the sign tolerance) over the whole
    declared box on the claimed sample's linear region, by the verifier's own parse of the head.
    Only a tie at the sample (``|z| <= 1e-6``) can be one; ``None`` when there is no tie or the
    head cannot be parsed (the rule then compares whole patterns)."""
    ties = np.abs(z) <= _SIGN_TOLERANCE
    if not ties.any():
        return None
    try:
        affine = ctx.affine_head()
    except CheckUnavailable:
        return None
    try:
        box = input_box(ctx.predicate.method)
    except CheckUnavailable:  # region.certificate fails a malformed box; no box: unbounded
        box = None
    reach = max(abs(box[0]), abs(box[1])) if box is not None else np.inf
    flat = np.zeros_like(ties)
    for i in np.flatnonzero(ties.any(axis=1)):
        rows, offs, _, _ = affine.local_affine(np.asarray(x[i], dtype=np.float64))
        if rows.shape[0] != z.shape[1]:
            return None
        slope = np.abs(rows).sum(axis=1)
        with np.errstate(invalid="ignore"):  # 0 * inf without a box: a slope of 0 is flat
            size = np.where(slope == 0, 0.0, slope * reach) + np.abs(offs)
        flat[i] = ties[i] & (size <= _SIGN_TOLERANCE)
    return flat


def _band_problem(ctx: VerifyContext, params: Any, x: Any, z: Any, patch: Any) -> str | None:
    """:func:`audit.verify._bands.wide_band` on the claimed samples (threat 22, ``wide_band``)."""
    try:
        affine = ctx.affine_head()
        box = input_box(ctx.predicate.method)
    except CheckUnavailable:  # region.certificate fails a proof whose head or box it cannot read
        return None
    hidden = sum(w.shape[0] for w in affine.weights[:-1])
    if hidden != z.shape[1]:
        return None  # region.certificate fails a head that does not match the served width
    claims = np.asarray(patch, dtype=np.int64)
    ties = None
    if params.gate == "dense":  # stored rows of neurons tied at a patch's sample are unchecked
        ties = np.zeros((params.patches, z.shape[1]), dtype=bool)
        for row in range(len(claims) - 1, -1, -1):  # the first claim of each patch, as its rows
            ties[claims[row]] = np.abs(z[row]) <= _SIGN_TOLERANCE
    return wide_band(
        affine,
        box,
        np.asarray(x, dtype=np.float64),
        z >= 0,
        claims,
        gate_patterns(params, z, claims),
        n=float(params.n),
        dense_ties=ties,
        work=ctx.policy.band_work,
    )


def _shared_region(params: Any, z: Any, patch: Any, *, flat: Any = None) -> str | None:
    """Two patches gated on one linear region (threat 21, ``shared_region``).

    ``region.certificate`` proves claim ``u`` for ``f + p_u`` where the served gates are
    ``g_u = 1`` and ``g_v = 0`` for every other patch; that is sound because distinct activation
    patterns have disjoint regions, so another gate is on inside ``S_u`` only within its thin
    ``1/n`` band. Two patches with *one* region are both fully on over all of it: the served
    model there is ``f + p_u + p_v``, which no certificate speaks about (each claim's proof
    covers an empty set), and the two pushes can cancel anywhere. Samples that share a region
    share one patch (the engine groups them), so every patch must have its own region.

    One region: the same pattern (activation and routed gates: the stored patterns; dense gate:
    the sign pattern of the claimed samples, which its rows must be), or patterns that differ
    only in neurons that are 0 over the whole box on the claimed sample's region (``flat``
    ``[claims, H]``, from :func:`_flat_neurons`): such a neuron's sign constrains nothing, and
    either gate is 1 there."""
    claims = np.asarray(patch)
    patterns = gate_patterns(params, z, claims)  # [P, H]
    first: dict[bytes, int] = {}
    for u in sorted(set(claims.tolist())) if params.pos is None else range(params.patches):
        v = first.setdefault(np.packbits(patterns[u]).tobytes(), u)
        if v != u:
            return _same_region(v, u)
    if flat is None:
        return None
    tied = np.flatnonzero(np.asarray(flat).any(axis=1))
    step = max(1, PAIR_BLOCK // len(patterns))
    for start in range(0, len(tied), step):  # matrix products, never a loop over pairs
        rows = tied[start : start + step]
        owner = claims[rows]
        same = mismatches(~flat[rows], patterns[owner], patterns) == 0
        same[np.arange(len(rows)), owner] = False
        hit = np.flatnonzero(same.any(axis=1))
        if hit.size:
            u, v = int(owner[hit[0]]), int(np.flatnonzero(same[hit[0]])[0])
            return _same_region(*sorted((u, v)))
    return None


def _same_region(u: int, v: int) -> str:
    return (
        f"patches {u} and {v} gate the same linear region: both are fully on over it, so the "
        "served model there is the original plus both patches, which no claim's certificate "
        "covers (samples of one region must share one patch)"
    )


def canonical_problems(ctx: VerifyContext, params: Any, cut_dim: int, hidden: int) -> list[str]:
    """Differences between the patched model's added subgraph and the canonical patch graph
    rebuilt from the declared parameters (:mod:`audit.verify._canonical`)."""
    head = ctx.head()
    original, patched = ctx.original_proto(), ctx.patched_proto()
    meta = metadata(patched)
    gate = meta.get("prune.gate", "")
    tail = meta.get("prune.tail")
    if gate not in GATE_FORMS:
        return [f"metadata prune.gate {gate[:30]!r} names no known patch form"]
    if (tail or "logits") not in TAIL_FORMS:
        return [f"metadata prune.tail {str(tail)[:30]!r} names no known patch tail"]
    if (tail == TAIL_FORM) != bool(head.tail):  # derived from the original, not the metadata
        return [
            f"metadata prune.tail is {str(tail)[:30]!r}, but the original model "
            + ("has an output tail (expected 'replay')" if head.tail else "has no output tail")
        ]
    spec = PatchSpec(
        head=head,
        gate=gate,
        patches=params.patches,
        classes=params.classes,
        hidden=hidden,
        cut_dim=cut_dim,
        affine=params.C is not None,
        linear=gate_linear(params),
        routing=params.routing,
    )
    expected = canonical_patch(spec, tail=tail or "logits")
    _, patch_nodes = match_original_nodes(original, patched)
    return compare_patch_graph(
        expected=expected,
        patch_nodes=patch_nodes,
        patched=patched,
        original=original,
        expected_meta=expected_metadata(head, gate, tail),
    )
