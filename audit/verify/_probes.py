"""Region probes: a certified claim covers the forget sample's whole linear region, so the
verifier tests points of that region it chooses itself, in the cut space.

Black-box part (always): for each probed claim, random unit directions from the sample; along
each, bisection finds the largest step that keeps the *original* model's activation pattern (as
onnxruntime computes it) and stays in the certificate's declared input box. Linear regions are
convex, so every point between the sample and that step is inside; the verifier draws points
uniformly along the segment and one just inside the boundary, re-confirms each is inside the
region, and requires the *patched* head to predict the claimed target with the certified margin
(inside the region the gate is fully on, g = 1, whatever the band 1/n).

Exact part (when the verifier can parse the head as affine layers, for a sample of claims): for
every other class ``j`` an LP minimises the margin ``(f + p_u)_t - (f + p_u)_j`` over the region
(scipy HiGHS); a minimum below the certified margin is re-checked with onnxruntime at the LP
optimum, and only a confirmed counterexample fails the check.

Threat: an owner who special-cases the exact forget inputs (a lookup, a tiny gate) passes
replay but fails here, because the verifier's points are fresh and secret until it runs."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.runtime import OnnxModel
from audit.verify._affine import AffineHead, parse_head
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._replay import claim_arrays, margins
from prune.formats import FormatError, parse_decimal_string

__all__ = ["RegionProbes", "input_box"]

F64 = NDArray[np.float64]


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


def _feasible_directions(raw: F64, start: F64, box: tuple[float, float] | None) -> F64:
    """Unit directions that do not leave the box at once: at a coordinate on a face of the box
    (e.g. a black pixel at 0), the outward component is dropped."""
    u = raw.copy()
    if box is not None:
        u[(start <= box[0]) & (u < 0)] = 0.0
        u[(start >= box[1]) & (u > 0)] = 0.0
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return np.asarray(u / np.where(norm > 0, norm, 1.0))


def _box_limit(x0: F64, u: F64, box: tuple[float, float] | None) -> F64:
    """Largest t >= 0 with x0 + t*u inside the box, per (row of x0, row of u)."""
    if box is None:
        return np.full(len(x0), np.sqrt(x0.shape[1]) * (1.0 + np.abs(x0).max()))
    low, high = box
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(u > 0, (high - x0) / u, np.inf)
        down = np.where(u < 0, (low - x0) / u, np.inf)
    return np.asarray(np.maximum(np.minimum(up, down).min(axis=1), 0.0))


class RegionProbes(Check[VerifyContext]):
    name = "region.probes"
    summary = (
        "points the verifier samples inside each certified region (and near its boundary) get "
        "the claimed target with the certified margin; plus an exact LP on a sample of claims"
    )
    requires = frozenset({"original", "forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate, policy = ctx.predicate, ctx.policy
        cols = claim_arrays(predicate.claims)
        certified = np.flatnonzero(cols["certified"])
        if len(certified) == 0:
            return self.not_applicable("no claim certifies a region (all point-only)")
        if policy.probe_claims is not None and len(certified) > policy.probe_claims:
            certified = np.sort(ctx.rng.choice(certified, policy.probe_claims, replace=False))
        openings = ctx.openings()
        ev = ctx.evaluate(openings.x, key="forget")
        rows = np.searchsorted(openings.leaf_index, cols["leaf"][certified])
        rows = rows.clip(0, len(openings) - 1)
        x0 = ev.x[rows].astype(np.float64)
        sign = ev.z[rows] >= 0  # the region: the original's own activation pattern at x0
        box = input_box(predicate.method)
        cut_shape = ev.extra["cut_shape"]
        original_head, patched_head = ctx.head_models(cut_shape)

        def run_head(model: OnnxModel, points: F64) -> list[NDArray[np.float32]]:
            shaped = points.astype(np.float32).reshape(len(points), *cut_shape)
            return model.run(shaped)

        def inside(points: F64, pattern: NDArray[np.bool_]) -> NDArray[np.bool_]:
            outs = run_head(original_head, points)
            z = np.concatenate([o.reshape(len(points), -1) for o in outs[:-1]], axis=1)
            ok = np.where(pattern, z >= 0, z <= 0).all(axis=1)
            if box is not None:
                ok &= ((points >= box[0]) & (points <= box[1])).all(axis=1)
            return np.asarray(ok)

        k, m = policy.probe_directions, policy.probe_points
        claim_of = np.repeat(np.arange(len(rows)), k)
        start = x0[claim_of]
        u = _feasible_directions(ctx.rng.normal(size=start.shape), start, box)
        pattern = sign[claim_of]
        lo = np.zeros(len(claim_of))
        hi = _box_limit(start, u, box)
        for _ in range(policy.bisection_steps):
            mid = 0.5 * (lo + hi)
            ok = inside(start + mid[:, None] * u, pattern)
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        fractions = np.concatenate(
            [ctx.rng.uniform(0.0, 1.0, size=(len(lo), m - 1)), np.full((len(lo), 1), 0.999)],
            axis=1,
        )
        probe_claim = np.repeat(claim_of, m)
        points = np.repeat(start, m, axis=0) + (fractions.reshape(-1) * np.repeat(lo, m))[
            :, None
        ] * np.repeat(u, m, axis=0)
        keep = inside(points, sign[probe_claim]) & (np.repeat(lo, m) > 0)
        points, probe_claim = points[keep], probe_claim[keep]
        if len(points) == 0:
            return self.failed(
                "not run: no probe point could be placed inside any certified region",
                claims_probed=len(rows),
            )
        idx = certified[probe_claim]
        logits = run_head(patched_head, points)[0].reshape(len(points), -1)
        margin = margins(logits, cols["target"][idx])
        bad = (logits.argmax(axis=1) != cols["target"][idx]) | (
            margin < cols["margin"][idx] - policy.margin_tolerance
        )
        evidence: dict[str, Any] = {
            "claims_probed": len(rows),
            "directions_per_claim": k,
            "points": len(points),
            "points_failed": int(bad.sum()),
            "median_radius": float(np.median(lo)),
            "zero_radius_directions": int((lo == 0).sum()),
            "min_margin_slack": float((margin - cols["margin"][idx]).min(initial=np.inf)),
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
        lp_problem = self._exact(
            ctx, x0, sign, certified, cols, box, run_head, patched_head, evidence
        )
        if lp_problem:
            return self.failed(lp_problem, **evidence)
        return self.passed(
            f"{len(points)} probe points in {len(rows)} certified regions hold their claims"
            f"{evidence.get('lp_summary', '')}",
            **evidence,
        )

    def _exact(
        self,
        ctx: VerifyContext,
        x0: F64,
        sign: NDArray[np.bool_],
        certified: NDArray[np.int64],
        cols: dict[str, NDArray[Any]],
        box: tuple[float, float] | None,
        run_head: Any,
        patched_head: Any,
        evidence: dict[str, Any],
    ) -> str | None:
        """The exact LP part; optional: unavailable parses are recorded, never passed off."""
        count = min(ctx.policy.lp_claims, len(certified))
        if count == 0:
            evidence["lp"] = "disabled"
            return None
        try:
            affine = parse_head(ctx.original_proto(), ctx.head())
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
        chosen = np.sort(ctx.rng.choice(len(certified), count, replace=False))
        params = ctx.patch()
        worst, unsolved = np.inf, 0
        for i in chosen:
            claim = int(certified[i])
            found = _lp_min_margin(affine, params, x0[i], sign[i], claim, cols, box)
            if found is None:
                unsolved += 1
                continue
            value, point = found
            worst = min(worst, value)
            if value < cols["margin"][claim] - ctx.policy.margin_tolerance:
                inward = point + 1e-6 * (x0[i] - point)
                got = run_head(patched_head, inward[None, :])[0].reshape(1, -1)
                real = float(margins(got, cols["target"][claim : claim + 1])[0])
                if real < cols["margin"][claim] - ctx.policy.margin_tolerance:
                    evidence["lp_counterexample_margin"] = real
                    return (
                        f"exact LP finds a point in the region of leaf {int(cols['leaf'][claim])} "
                        f"with margin {real:.4g} < certified {cols['margin'][claim]:.4g} "
                        "(confirmed by onnxruntime)"
                    )
        evidence["lp_claims"] = int(count)
        evidence["lp_unsolved"] = unsolved
        evidence["lp_min_margin"] = float(worst)
        evidence["lp_summary"] = f"; exact LP on {count} regions: min margin {worst:.4g}"
        return None


def _lp_min_margin(
    affine: AffineHead,
    params: Any,
    x0: F64,
    sign: NDArray[np.bool_],
    claim: int,
    cols: dict[str, NDArray[Any]],
    box: tuple[float, float] | None,
) -> tuple[float, F64] | None:
    """Minimum over the region of ``(f + p_u)_t - (f + p_u)_j`` over ``j != t``, and its argmin."""
    from scipy.optimize import linprog

    z_rows, z_off, f_rows, f_off = affine.local_affine(x0)
    s = np.where(sign, -1.0, 1.0)  # active: -z <= 0; inactive: z <= 0
    a_ub, b_ub = z_rows * s[:, None], -z_off * s
    u, t = int(cols["patch"][claim]), int(cols["target"][claim])
    classes = f_rows.shape[0]
    lin = f_rows.copy()
    off = f_off + params.d[u]
    if params.C is not None:
        lin = lin + params.C[:, u * classes : (u + 1) * classes].T
    bounds = [(box[0], box[1])] * len(x0) if box else [(None, None)] * len(x0)
    best: tuple[float, F64] | None = None
    for j in range(classes):
        if j == t:
            continue
        c = lin[t] - lin[j]
        result = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if result.status != 0:
            continue
        value = float(result.fun + off[t] - off[j])
        if best is None or value < best[0]:
            best = (value, np.asarray(result.x, dtype=np.float64))
    return best
