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

from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._affine import AffineHead
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._replay import claim_arrays, flip_only, margins
from prune.formats import FormatError, parse_decimal_string

__all__ = ["RegionProbes", "input_box"]

F64 = NDArray[np.float64]
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
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(u > 0, (high - x0) / u, np.where(u < 0, (low - x0) / u, np.inf))
    return np.asarray(np.maximum(limit.min(axis=1), 0.0), dtype=np.float32)


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
            z, _ = ctx.original_head(points, cut_shape)
            ok = np.where(pattern, z >= 0, z <= 0).all(axis=1)
            if box is not None:
                ok &= ((points >= box[0]) & (points <= box[1])).all(axis=1)
            return np.asarray(ok)

        k, m = policy.probe_directions, policy.probe_points
        claim_of = np.repeat(np.arange(len(rows)), k)
        start = x0[claim_of]

        def chord(
            origin: NDArray[np.float32], direction: NDArray[np.float32]
        ) -> NDArray[np.float32]:
            """Largest step (bisection) along ``direction`` that stays in the region."""
            lo = np.zeros(len(origin), dtype=np.float32)
            hi = _box_limit(origin, direction, box)
            for _ in range(policy.bisection_steps):
                mid = 0.5 * (lo + hi)
                ok = inside(origin + mid[:, None] * direction, sign[claim_of])
                lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
            return lo

        raw = ctx.rng.standard_normal(size=start.shape, dtype=np.float32)
        u = _feasible_directions(raw, start, box)
        lo = chord(start, u)
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
        ahead, back = chord(middle, v), chord(middle, -v)
        t = ctx.rng.uniform(0.0, 1.0, size=(len(middle), m)).astype(np.float32)
        offsets = -back[:, None] + t * (ahead + back)[:, None]
        walk_points = middle[:, None, :] + offsets[:, :, None] * v[:, None, :]
        points = np.concatenate([ray_points, walk_points], axis=1).reshape(-1, x0.shape[1])
        moved = np.concatenate([steps, np.abs(offsets) + steps[:, :1]], axis=1).reshape(-1)
        probe_claim = np.repeat(claim_of, 2 * m)
        keep = inside(points, sign[probe_claim]) & (moved > 0)
        points, probe_claim = points[keep], probe_claim[keep]
        if len(points) == 0:
            return self.failed(
                "not run: no probe point could be placed inside any certified region",
                claims_probed=len(rows),
            )
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
        lp_problem = _exact(ctx, x0, sign, certified, order, cols, box, evidence)
        if lp_problem:
            return self.failed(lp_problem, **evidence)
        return self.passed(
            f"{len(points)} probe points in {len(rows)} certified regions hold their claims"
            f"{evidence.get('lp_summary', '')}",
            **evidence,
        )


def _exact(
    ctx: VerifyContext,
    x0: NDArray[np.float32],
    sign: NDArray[np.bool_],
    certified: NDArray[np.int64],
    order: NDArray[np.int64],
    cols: dict[str, NDArray[Any]],
    box: tuple[float, float] | None,
    evidence: dict[str, Any],
) -> str | None:
    """The exact part, on the probed claims ``order`` (weakest probe slack first). Optional: an
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
    worst, solved, skipped, unsolved = np.inf, 0, 0, 0
    for i in order:
        claim = int(certified[i])
        need = float(cols["margin"][claim]) - tolerance
        found = _lp_min_margin(
            affine, params, x0[i].astype(np.float64), sign[i], claim, cols, box, need
        )
        solved += found[2]
        skipped += found[3]
        unsolved += found[4]
        worst = min(worst, found[0])
        if found[1] is not None:  # onnxruntime at every LP optimum, not only below the claim
            inward = found[1] + 1e-6 * (x0[i] - found[1])
            got = ctx.patched_head(inward[None, :].astype(np.float32), ev.extra["cut_shape"])
            real = float(margins(got, cols["target"][claim : claim + 1])[0])
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
    evidence["lp_min_margin"] = float(worst)
    evidence["lp_summary"] = f"; exact LP on the {len(order)} weakest: min margin {worst:.4g}"
    return None


def _dual_floor(c: F64, mu: F64, a_ub: F64, b_ub: F64, box: tuple[float, float]) -> float:
    """Weak duality: for any ``mu >= 0``, ``min_{x in box} (c + A^T mu) x - mu b`` is a lower
    bound of ``min c x`` over ``{x in box : A x <= b}``. Sound whatever ``mu`` is."""
    reduced = c + a_ub.T @ mu
    return float(np.minimum(reduced * box[0], reduced * box[1]).sum() - mu @ b_ub)


def _lp_min_margin(
    affine: AffineHead,
    params: Any,
    x0: F64,
    sign: NDArray[np.bool_],
    claim: int,
    cols: dict[str, NDArray[Any]],
    box: tuple[float, float] | None,
    need: float,
) -> tuple[float, F64 | None, int, int, int]:
    """Lower bound of ``min_{x in region} (f + p_u)_t(x) - (f + p_u)_j(x)`` over ``j != t``.

    Classes in order of their margin at ``x0`` (weakest first). A class is settled without an
    LP when a sound bound already clears ``need``: the interval bound over the box, or the weak
    dual bound with the multipliers of the last LP solved; otherwise one LP (scipy HiGHS) gives
    its exact minimum. Returns (value, argmin or None, LPs solved, classes bounded, LPs the
    solver could not finish); ``value`` is exact whenever every class below ``need`` was
    solved."""
    from scipy.optimize import linprog

    z_rows, z_off, f_rows, f_off = affine.local_affine(x0)
    s = np.where(sign, -1.0, 1.0)  # active: -z <= 0; inactive: z <= 0
    a_ub, b_ub = z_rows * s[:, None], -z_off * s
    u, t = int(cols["patch"][claim]), int(cols["target"][claim])
    lin = f_rows.copy()
    off = f_off + params.d[u]
    columns = params.columns()
    if columns is not None:
        lin = lin + columns[:, u, :].T
    bounds = [(box[0], box[1])] * len(x0) if box else [(None, None)] * len(x0)
    at_x0 = (lin[t] - lin) @ x0 + (off[t] - off)
    best: tuple[float, F64 | None] = (np.inf, None)
    solved = bounded = unsolved = 0
    mu: F64 | None = None
    for j in np.argsort(at_x0, kind="stable"):
        if j == t:
            continue
        c = lin[t] - lin[j]
        const = float(off[t] - off[j])
        if box is not None:
            floor = float(np.minimum(c * box[0], c * box[1]).sum()) + const
            if mu is not None:
                floor = max(floor, _dual_floor(c, mu, a_ub, b_ub, box) + const)
            if floor >= need:  # a sound bound clears the claim: no LP needed
                bounded += 1
                best = (min(best[0], floor), best[1])
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
    return best[0], best[1], solved, bounded, unsolved
