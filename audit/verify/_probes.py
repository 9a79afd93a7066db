"""Region probes: a certified claim covers the forget sample's whole linear region, so the
verifier tests points of that region it chooses itself, in the cut space.

Black-box part (always; defence in depth, the proof is ``region.certificate``): for each probed
claim, random unit directions from the sample; along each, bisection finds the largest step that
keeps the *original* model's activation pattern (as onnxruntime computes it) and stays in the
certificate's declared input box. Linear regions are convex, so every point between the sample
and that step is inside; the verifier draws points uniformly along the segment and one just
inside the boundary, then takes one hit-and-run step from a uniform point of each segment (a
fresh direction, the whole chord through the point, points uniform on it: deep inside the
region, away from the sample), re-confirms each point is inside the region, and requires the
*patched* head to predict the claimed target with the certified margin.

Exact part (when the verifier can parse the head as affine layers, on the ``lp_claims`` claims
whose probes came closest to their certified margin): for every other class ``j`` not already
settled by a sound bound (interval over the box, or weak duality with the multipliers of the
previous LP), an LP minimises the margin ``(f + p_u)_t - (f + p_u)_j`` over the region (scipy
HiGHS); a minimum below the certified margin is re-checked with onnxruntime at the LP optimum,
and only a confirmed counterexample fails the check.

Threat: an owner who special-cases the exact forget inputs (a lookup, a tiny gate) passes
replay but fails here, because the verifier's points are fresh and secret until it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError, VerificationError
from audit.proof import read_bounded
from audit.verify._affine import AffineHead
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._replay import claim_arrays, flip_only, margins
from prune.formats import CalibratedClaimRecord, FormatError, parse_decimal_string, read_duals

__all__ = ["RegionProbes", "input_box"]

F64 = NDArray[np.float64]
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LP_OPTIONS = {"presolve": False}  # dense, small LPs: presolve costs more than it saves


def input_box(method: Any) -> tuple[float, float] | None:
    """``method.input_box`` as (low, high), or None when the certificate declares none."""
    box = method.get("input_box") if hasattr(method, "get") else None
    if box is None:
        return None
    try:
        low = parse_decimal_string(box["low"], field="method.input_box.low")
        high = parse_decimal_string(box["high"], field="method.input_box.high")
    except (FormatError, KeyError, TypeError) as exc:
        raise CheckUnavailable(f"certificate method.input_box is malformed: {exc}") from exc
    if not low < high:
        raise CheckUnavailable("certificate method.input_box is empty")
    if max(abs(low), abs(high)) > _FLOAT32_MAX:
        # the cut tensor is float32: no input the model runs on has such a coordinate, and
        # bounds over a box this wide overflow (inf, or NaN where inf meets 0)
        raise CheckUnavailable(
            f"certificate method.input_box [{low:g}, {high:g}] reaches beyond float32's range "
            "(the model's cut values are float32)"
        )
    return low, high


def _feasible_directions(
    raw: NDArray[np.float32], start: NDArray[np.float32], box: tuple[float, float] | None
) -> NDArray[np.float32]:
    """Unit directions that do not leave the box at once: at a coordinate on a face of the box
    (e.g. a black pixel at 0), the outward component is dropped."""
    u = raw.copy()
    if box is not None:
        u[(start <= box[0]) & (u < 0)] = 0.0
        u[(start >= box[1]) & (u > 0)] = 0.0
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return np.asarray(u / np.where(norm > 0, norm, 1.0), dtype=np.float32)


def _box_limit(
    x0: NDArray[np.float32], u: NDArray[np.float32], box: tuple[float, float] | None
) -> NDArray[np.float32]:
    """Largest t >= 0 with x0 + t*u inside the box, per row (a generous radius without box)."""
    if box is None:
        radius = np.sqrt(x0.shape[1]) * (1.0 + np.abs(x0).max())
        return np.full(len(x0), radius, dtype=np.float32)
    low, high = box
    # a box near float32's limits overflows to inf here: a limit beyond reach, as intended
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        limit = np.where(u > 0, (high - x0) / u, np.where(u < 0, (low - x0) / u, np.inf))
    return np.asarray(np.maximum(limit.min(axis=1), 0.0), dtype=np.float32)


def _inside(
    ctx: VerifyContext,
    points: NDArray[np.floating[Any]],
    pattern: NDArray[np.bool_],
    box: tuple[float, float] | None,
    cut_shape: tuple[int, ...],
) -> NDArray[np.bool_]:
    """Whether each point is in its region as onnxruntime computes it: the original's
    activation pattern there is ``pattern`` (ties ``z = 0`` fit either side) and the point is in
    the declared box."""
    z, _ = ctx.original_head(points, cut_shape)
    ok = np.where(pattern, z >= 0, z <= 0).all(axis=1)
    if box is not None:
        ok &= ((points >= box[0]) & (points <= box[1])).all(axis=1)
    return np.asarray(ok)


_INWARD = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
"""Steps from an LP optimum (a vertex of the region) towards the sample, as fractions of the
distance: the first point that onnxruntime places inside the region is where the served model
is checked. At the vertex itself float32 rounding can flip the sign of a pre-activation that is
0 in exact arithmetic; such a point is outside the claim (docs/VERIFY.md), and with the routed
gate one flipped split neuron turns the patch off there."""


class RegionProbes(Check[VerifyContext]):
    name = "region.probes"
    summary = (
        "points the verifier samples inside each certified region (and near its boundary) get "
        "the claimed target with the certified margin; plus an exact LP on the weakest claims"
    )
    requires = frozenset({"original", "forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate, policy = ctx.predicate, ctx.policy
        flip = flip_only(predicate.claims)
        if not flip:
            return self.not_applicable("no flip claims (calibrated claims: replay.calibrated)")
        cols = claim_arrays(flip)
        certified = np.flatnonzero(cols["certified"])
        if len(certified) == 0:
            return self.not_applicable(
                "no flip claim certifies a region (all point-only or calibrated)"
            )
        if policy.probe_claims is not None and len(certified) > policy.probe_claims:
            certified = np.sort(ctx.rng.choice(certified, policy.probe_claims, replace=False))
        openings = ctx.openings()
        ev = ctx.evaluate(openings.x, key="forget")
        rows = np.searchsorted(openings.leaf_index, cols["leaf"][certified])
        rows = rows.clip(0, len(openings) - 1)
        x0 = np.ascontiguousarray(ev.x[rows], dtype=np.float32)
        sign = ev.z[rows] >= 0  # the region: the original's own activation pattern at x0
        box = input_box(predicate.method)
        cut_shape = ev.extra["cut_shape"]

        def inside(
            points: NDArray[np.floating[Any]], pattern: NDArray[np.bool_]
        ) -> NDArray[np.bool_]:
            return _inside(ctx, points, pattern, box, cut_shape)

        k, m = policy.probe_directions, policy.probe_points
        claim_of = np.repeat(np.arange(len(rows)), k)
        start = x0[claim_of]

        def chord(
            origin: NDArray[np.float32], direction: NDArray[np.float32], owner: NDArray[np.intp]
        ) -> NDArray[np.float32]:
            """Largest step (bisection) along each ``direction`` that stays in the region of
            claim ``owner``; all rays bisected together, one onnxruntime call per step."""
            lo = np.zeros(len(origin), dtype=np.float32)
            hi = _box_limit(origin, direction, box)
            for _ in range(policy.bisection_steps):
                mid = 0.5 * (lo + hi)
                ok = inside(origin + mid[:, None] * direction, sign[owner])
                lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
            return lo

        raw = ctx.rng.standard_normal(size=start.shape, dtype=np.float32)
        u = _feasible_directions(raw, start, box)
        lo = chord(start, u, claim_of)
        fractions = np.concatenate(
            [ctx.rng.uniform(0.0, 1.0, size=(len(lo), m - 1)), np.full((len(lo), 1), 0.999)],
            axis=1,
        ).astype(np.float32)
        steps = fractions * lo[:, None]  # [rays, m]
        ray_points = start[:, None, :] + steps[:, :, None] * u[:, None, :]
        # one hit-and-run step from a uniform point of each ray: a fresh direction, the whole
        # chord through that point (both ways), m points uniform on it: deep inside the region
        middle = ray_points[:, 0, :]
        raw2 = ctx.rng.standard_normal(size=middle.shape, dtype=np.float32)
        v = _feasible_directions(raw2, middle, box)
        both = chord(
            np.concatenate([middle, middle]), np.concatenate([v, -v]), np.tile(claim_of, 2)
        )
        ahead, back = both[: len(middle)], both[len(middle) :]
        t = ctx.rng.uniform(0.0, 1.0, size=(len(middle), m)).astype(np.float32)
        offsets = -back[:, None] + t * (ahead + back)[:, None]
        walk_points = middle[:, None, :] + offsets[:, :, None] * v[:, None, :]
        points = np.concatenate([ray_points, walk_points], axis=1).reshape(-1, x0.shape[1])
        moved = np.concatenate([steps, np.abs(offsets) + steps[:, :1]], axis=1).reshape(-1)
        probe_claim = np.repeat(claim_of, 2 * m)
        keep = inside(points, sign[probe_claim]) & (moved > 0)
        points, probe_claim = points[keep], probe_claim[keep]
        if len(points) == 0:
            return _unplaced_outcome(self, ctx, x0, sign, certified, cols, box, len(rows))
        idx = certified[probe_claim]
        logits = ctx.patched_head(points, cut_shape)
        margin = margins(logits, cols["target"][idx])
        slack = margin - cols["margin"][idx]
        bad = (logits.argmax(axis=1) != cols["target"][idx]) | (slack < -policy.margin_tolerance)
        evidence: dict[str, Any] = {
            "claims_probed": len(rows),
            "directions_per_claim": k,
            "points": len(points),
            "points_failed": int(bad.sum()),
            "median_radius": float(np.median(lo)),
            "median_chord": float(np.median(ahead + back)),
            "zero_radius_directions": int((lo == 0).sum()),
            "min_margin_slack": float(slack.min(initial=np.inf)),
            "input_box": list(box) if box else None,
        }
        if bad.any():
            first = int(idx[np.flatnonzero(bad)[0]])
            bad_claims = len(set(idx[bad].tolist()))
            return self.failed(
                f"{int(bad.sum())} of {len(points)} probe points inside claimed regions break "
                f"their claim ({bad_claims} claims; first: leaf {int(cols['leaf'][first])})",
                **evidence,
            )
        weakest = np.full(len(rows), np.inf)
        np.minimum.at(weakest, probe_claim, slack)
        order = np.argsort(weakest, kind="stable")[: policy.lp_claims]
        # per probed claim and class j: the smallest (logit_t - logit_j) its probes saw
        target = cols["target"][idx]
        gaps = logits[np.arange(len(logits)), target][:, None].astype(np.float64) - logits
        gaps[np.arange(len(logits)), target] = np.inf
        closest = np.full((len(rows), logits.shape[1]), np.inf)
        np.minimum.at(closest, probe_claim, gaps)
        lp_problem = _exact(ctx, x0, sign, certified, order, closest, cols, box, evidence)
        if lp_problem:
            return self.failed(lp_problem, **evidence)
        return self.passed(
            f"{len(points)} probe points in {len(rows)} certified regions hold their claims"
            f"{evidence.get('lp_summary', '')}",
            **evidence,
        )


def _unplaced_outcome(
    check: RegionProbes,
    ctx: VerifyContext,
    x0: NDArray[np.float32],
    sign: NDArray[np.bool_],
    certified: NDArray[np.int64],
    cols: dict[str, NDArray[Any]],
    box: tuple[float, float] | None,
    probed: int,
) -> CheckOutcome:
    """No random probe point lands inside any region: every sample sits where its region,
    within the box, has no interior the rays can reach (ties between units that are equal at
    the sample, e.g. equal values in a pooling window over a blank background, with pixels on
    the box's face). The sampling part has nothing to sample; the exact LP part still runs on
    the first ``--lp-claims`` claims and decides, and with it disabled the check is not run
    (region.certificate proves every claim either way)."""
    evidence: dict[str, Any] = {"claims_probed": probed, "points": 0}
    order = np.arange(min(len(x0), ctx.policy.lp_claims), dtype=np.int64)
    if len(order) == 0:
        return check.not_applicable(
            "not run: no probe point could be placed inside any certified region (regions "
            "without reachable interior in the box) and the exact LP is disabled",
            **evidence,
        )
    closest = np.zeros((len(x0), int(cols["target"].max()) + 2))
    problem = _exact(ctx, x0, sign, certified, order, closest, cols, box, evidence)
    if problem:
        return check.failed(problem, **evidence)
    need = float(cols["margin"][certified[order]].min()) - ctx.policy.margin_tolerance
    if "lp_min_margin" in evidence and evidence["lp_min_margin"] < need:
        return check.failed(
            f"exact LP finds a point in a region with margin {evidence['lp_min_margin']:.4g} "
            f"< the smallest certified margin {need + ctx.policy.margin_tolerance:.4g} "
            "(no point near it could be placed for onnxruntime)",
            **evidence,
        )
    if "lp_min_margin" not in evidence:
        return check.not_applicable(
            f"not run: no probe point could be placed inside any certified region, and the "
            f"exact LP could not run ({evidence.get('lp', 'no result')})",
            **evidence,
        )
    return check.passed(
        "no probe point could be placed inside any certified region (no interior the rays "
        f"reach in the box at the samples){evidence.get('lp_summary', '')}",
        **evidence,
    )


def _exact(
    ctx: VerifyContext,
    x0: NDArray[np.float32],
    sign: NDArray[np.bool_],
    certified: NDArray[np.int64],
    order: NDArray[np.int64],
    closest: F64,
    cols: dict[str, NDArray[Any]],
    box: tuple[float, float] | None,
    evidence: dict[str, Any],
) -> str | None:
    """The exact part, on the probed claims ``order`` (weakest probe slack first), each class
    in order of ``closest`` (the smallest gap to the target its probes saw). Optional: an
    unparsable head is recorded in the evidence, never passed off as checked."""
    if len(order) == 0:
        evidence["lp"] = "disabled"
        return None
    try:
        affine = ctx.affine_head()
    except CheckUnavailable as exc:
        evidence["lp"] = f"not run: {exc}"
        return None
    ev = ctx.evaluate(ctx.openings().x, key="forget")
    error = affine.max_error(
        ev.x.astype(np.float64), ev.z.astype(np.float64), ev.logits.astype(np.float64)
    )
    if error > 1e-4:
        evidence["lp"] = f"not run: the head parse disagrees with onnxruntime ({error:.2g})"
        return None
    params = ctx.patch()
    tolerance = ctx.policy.margin_tolerance
    cut = ev.extra["cut_shape"]
    owner = _owner_multipliers(ctx, affine)
    worst, solved, skipped, unsolved, left = np.inf, 0, 0, 0, 0
    for i in order:
        claim = int(certified[i])
        need = float(cols["margin"][claim]) - tolerance
        found = _lp_min_margin(
            affine,
            params,
            x0[i].astype(np.float64),
            sign[i],
            claim,
            cols,
            box,
            owner=None if owner is None else owner(claim),
            priority=closest[i],
            budget=ctx.policy.lp_classes,
        )
        solved += found[2]
        skipped += found[3]
        unsolved += found[4]
        left += found[5]
        worst = min(worst, found[0])
        if found[1] is not None:  # onnxruntime at the LP optimum, not only below the claim
            steps = np.asarray(_INWARD)[:, None]
            near = (found[1][None, :] + steps * (x0[i] - found[1])[None, :]).astype(np.float32)
            placed = np.flatnonzero(
                _inside(ctx, near, np.broadcast_to(sign[i], (len(near), len(sign[i]))), box, cut)
            )
            if len(placed) == 0:  # recorded: no float32 point near the vertex is inside
                evidence["lp_optima_not_placed"] = evidence.get("lp_optima_not_placed", 0) + 1
                continue
            got = ctx.patched_head(near[placed[:1]], cut)
            real = float(margins(got, cols["target"][claim : claim + 1])[0])
            evidence["lp_onnxruntime_step"] = max(
                float(_INWARD[int(placed[0])]), evidence.get("lp_onnxruntime_step", 0.0)
            )
            evidence["lp_onnxruntime_min_margin"] = min(
                real, evidence.get("lp_onnxruntime_min_margin", np.inf)
            )
            if real < need:
                evidence["lp_counterexample_margin"] = real
                return (
                    f"exact LP finds a point in the region of leaf {int(cols['leaf'][claim])} "
                    f"with margin {real:.4g} < certified {cols['margin'][claim]:.4g} "
                    "(confirmed by onnxruntime)"
                )
    evidence["lp_claims"] = len(order)
    evidence["lp_solved"] = solved
    evidence["lp_classes_bounded"] = skipped
    evidence["lp_unsolved"] = unsolved
    evidence["lp_classes_left"] = left
    evidence["lp_exact"] = unsolved == 0 and left == 0
    evidence["lp_min_margin"] = float(worst)
    scope = "" if left == 0 else f" ({solved} LPs; {left} classes left to region.certificate)"
    evidence["lp_summary"] = (
        f"; exact LP on the {len(order)} weakest: min margin {worst:.4g}{scope}"
    )
    return None


def _owner_multipliers(
    ctx: VerifyContext, affine: AffineHead
) -> Callable[[int], F64 | None] | None:
    """The owner's multipliers of flip claim ``i`` (index into :func:`flip_only`), rows ``j !=
    target`` ascending, from the region certificate file; None when the certificate has none
    or it cannot be read (``region.certificate`` reports that). Used only to skip LPs by weak
    duality, which is sound for *any* multipliers: a bad file costs LPs, never soundness."""
    predicate = ctx.predicate
    descriptor = predicate.region_certificate
    hidden = sum(w.shape[0] for w in affine.weights[:-1])
    classes = affine.weights[-1].shape[0]
    if descriptor is None or descriptor.hidden != hidden:
        return None
    offsets: list[int] = []  # per flip claim: its first row in the file (-1: not certified)
    row = 0
    try:
        for claim in predicate.claims:
            count = len(claim.obligations(classes).bound) if claim.region == "certified" else 0
            if not isinstance(claim, CalibratedClaimRecord):
                offsets.append(row if count == classes - 1 else -1)
            row += count
        if row != descriptor.rows:
            return None
        data = read_bounded(
            ctx.inputs.proof / descriptor.path, ctx.limits.model_bytes, what=descriptor.path
        )
        lam = read_duals(data, descriptor)
    except (FormatError, VerificationError, OSError, InputError):
        return None

    def of(i: int) -> F64 | None:
        start = offsets[i] if i < len(offsets) else -1
        return None if start < 0 else np.maximum(lam[start : start + classes - 1], 0.0)

    return of


def _dual_floor(c: F64, mu: F64, a_ub: F64, b_ub: F64, box: tuple[float, float]) -> float:
    """Weak duality: for any ``mu >= 0``, ``min_{x in box} (c + A^T mu) x - mu b`` is a lower
    bound of ``min c x`` over ``{x in box : A x <= b}``. Sound whatever ``mu`` is."""
    reduced = c + a_ub.T @ mu
    return float(np.minimum(reduced * box[0], reduced * box[1]).sum() - mu @ b_ub)


_FLOOR_ROUNDING = 1e-9  # relative; float64 evaluation of a floor, far above its real rounding


def _lp_min_margin(
    affine: AffineHead,
    params: Any,
    x0: F64,
    sign: NDArray[np.bool_],
    claim: int,
    cols: dict[str, NDArray[Any]],
    box: tuple[float, float] | None,
    *,
    owner: F64 | None,
    priority: F64,
    budget: int,
) -> tuple[float, F64 | None, int, int, int, int]:
    """The minimum over the region of ``(f + p_u)_t(x) - (f + p_u)_j(x)``, ``j != t``, with
    its argmin, by branch and bound over the classes, at most ``budget`` LPs (0: no cap).

    Classes in order of ``priority`` (the smallest gap the probes saw), then of their margin at
    ``x0``: the likeliest minimisers first. A class is skipped without an LP when a sound lower
    bound of its minimum is already at least the smallest LP minimum found so far (it cannot
    hold the overall minimum): the interval bound over the box, or weak duality with the
    owner's multipliers ``owner`` (rows ``j != t`` ascending) or with those of the last LP
    solved; otherwise one LP (scipy HiGHS) gives its exact minimum, until the budget is spent.
    Returns (value, argmin or None, LPs solved, classes bounded, LPs the solver could not
    finish, classes left unexamined); ``value`` is the exact minimum over all classes when no
    LP was unsolved and no class was left."""
    from scipy.optimize import linprog

    z_rows, z_off, f_rows, f_off = affine.local_affine(x0)
    s = np.where(sign, -1.0, 1.0)  # active: -z <= 0; inactive: z <= 0
    a_ub, b_ub = z_rows * s[:, None], -z_off * s
    u, t = int(cols["patch"][claim]), int(cols["target"][claim])
    classes = f_rows.shape[0]
    lin = f_rows.copy()
    off = f_off + params.d[u]
    columns = params.columns()
    if columns is not None:
        lin = lin + columns[:, u, :].T
    bounds = [(box[0], box[1])] * len(x0) if box else [(None, None)] * len(x0)
    at_x0 = (lin[t] - lin) @ x0 + (off[t] - off)
    best: tuple[float, F64 | None] = (np.inf, None)
    solved = bounded = unsolved = left = 0
    mu: F64 | None = None
    others = [j for j in range(classes) if j != t]
    if priority.shape != at_x0.shape:  # a served head wider than the original's classes
        priority = np.zeros_like(at_x0)  # (structure.patch refuses it): order by x0 alone
    for j in np.lexsort((at_x0, priority)):
        if j == t:
            continue
        if budget and solved >= budget:
            left += 1
            continue
        c = lin[t] - lin[j]
        const = float(off[t] - off[j])
        if box is not None and np.isfinite(best[0]):
            floor = float(np.minimum(c * box[0], c * box[1]).sum())
            for multipliers in (
                None if owner is None or len(owner) != len(others) else owner[others.index(j)],
                mu,
            ):
                if multipliers is not None and len(multipliers) == len(b_ub):
                    floor = max(floor, _dual_floor(c, multipliers, a_ub, b_ub, box))
            floor += const
            if floor - _FLOOR_ROUNDING * (1.0 + abs(floor)) >= best[0]:
                bounded += 1  # its minimum is at least the best found: not the overall one
                continue
        result = linprog(
            c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs-ds", options=_LP_OPTIONS
        )
        solved += 1
        if result.status != 0:
            unsolved += 1  # recorded; the exact part is a complement to the probes
            continue
        mu = np.maximum(-np.asarray(result.ineqlin.marginals, dtype=np.float64), 0.0)
        value = float(result.fun) + const
        if value < best[0]:
            best = (value, np.asarray(result.x, dtype=np.float64))
    return best[0], best[1], solved, bounded, unsolved, left
