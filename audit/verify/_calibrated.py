"""``replay.calibrated``: every ``calibrated`` claim (docs/FORMATS.md, "Calibrated claims") holds.

Per claim, with the auditor's own computations only:

1. replay: the opened label is the claim's label; the deployed ``model.onnx`` (onnxruntime) gives,
   at the sample, logits within ``output_tolerance(output)`` of the declared ``output`` (every
   class), all finite, and ``logit[label] - logit[rival] <= upper_margin + margin_tolerance``;
2. region (every claim, not a sample of them): the obligation
   ``max_{x in S} (e_label - e_rival) . (f + p_u)(x) <= upper_margin`` over the sample's linear
   region ``S`` (the verifier's own parse of the original head, the patch ``u``'s declared
   ``C, d``). First the interval bound over the declared input box, which is sound for any
   region in the box (weak duality with zero multipliers); only if it does not clear the bound,
   one exact LP over ``S`` (scipy HiGHS) gives the maximum. A head the verifier cannot parse, a
   certificate without an input box or an LP that does not finish is a failure (fail-closed):
   this check *is* the argument for the region claim.

Float arithmetic: the interval bound and the LP are evaluated in float64; a relative slack of
``1e-9 * (1 + sum |c| * max(|lo|, |hi|) + |const|)`` covers their rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._probes import input_box
from prune.formats import CalibratedClaimRecord, output_tolerance

__all__ = ["ReplayCalibrated", "interval_upper_bound"]

F64 = NDArray[np.float64]


def _rounding(c: F64, const: float, box: tuple[float, float]) -> float:
    return 1e-9 * (1.0 + float(np.abs(c).sum()) * max(abs(box[0]), abs(box[1])) + abs(const))


def interval_upper_bound(c: F64, const: float, box: tuple[float, float]) -> float:
    """A sound upper bound of ``max c.x + const`` over the box, hence over any region in it
    (weak duality with zero multipliers), with the float64 rounding term."""
    lo, hi = box
    return float(np.maximum(c * lo, c * hi).sum()) + const + _rounding(c, const, box)


def _lp_upper(c: F64, const: float, a_ub: F64, b_ub: F64, box: tuple[float, float]) -> float:
    from scipy.optimize import linprog

    lo, hi = box
    res = linprog(-c, A_ub=a_ub, b_ub=b_ub, bounds=[(lo, hi)] * len(c), method="highs")
    if res.status != 0:
        raise CheckUnavailable(f"the region LP did not finish: {res.message}")
    return (
        float(-res.fun) + const + _rounding(c, const, box) + 1e-7
    )  # + HiGHS feasibility tolerance budget


class ReplayCalibrated(Check[VerifyContext]):
    name = "replay.calibrated"
    summary = (
        "every calibrated claim holds: the output at the sample (onnxruntime) and the upper bound "
        "of the true-class margin over the sample's whole linear region (exact, every claim)"
    )
    requires = frozenset({"original", "forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        claims = [c for c in ctx.predicate.claims if isinstance(c, CalibratedClaimRecord)]
        if not claims:
            return self.not_applicable("no calibrated claims")
        openings = ctx.openings()
        leaf = np.array([c.leaf_index for c in claims], dtype=np.int64)
        rows = np.minimum(np.searchsorted(openings.leaf_index, leaf), len(openings) - 1)
        if not np.array_equal(openings.leaf_index[rows], leaf):
            raise CheckUnavailable("forget.npz does not open every claimed leaf")
        x = openings.x[rows]
        logits = ctx.patched_logits(x).astype(np.float64)
        classes = logits.shape[1]
        problems: list[str] = []
        if any(len(c.output) != classes for c in claims):
            return self.failed(f"a calibrated claim's output does not have {classes} classes")
        label = np.array([c.label for c in claims], dtype=np.int64)
        rival = np.array([c.rival for c in claims], dtype=np.int64)
        bound = np.array([c.margin_bound() for c in claims])
        output = np.array([c.output_values() for c in claims])
        tol = np.array([output_tolerance(tuple(o)) for o in output])
        wrong_label = openings.y[rows] != label
        if wrong_label.any():
            problems.append(
                f"{int(wrong_label.sum())} claims name a label other than the opened one"
            )
        gap = np.abs(logits - output).max(axis=1)
        off = ~np.isfinite(logits).all(axis=1) | (gap > tol)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            problems.append(
                f"{int(off.sum())} of {len(claims)} samples do not output the declared logits "
                f"(first: leaf {int(leaf[i])}, gap {gap[i]:.4g} > {tol[i]:.3g})"
            )
        every = np.arange(len(claims))
        at_sample = logits[every, label] - logits[every, rival]
        over = at_sample > bound + ctx.policy.margin_tolerance
        if over.any():
            i = int(np.flatnonzero(over)[0])
            problems.append(
                f"{int(over.sum())} samples are more confident than their claimed bound (first: "
                f"leaf {int(leaf[i])}, margin {at_sample[i]:.4g} > {bound[i]:.4g})"
            )
        region = self._regions(ctx, claims, rows, label, rival, bound)
        evidence: dict[str, Any] = {
            "claims": len(claims),
            "output_gap_max": float(gap.max()),
            "wrong_label": int(wrong_label.sum()),
            "output_mismatch": int(off.sum()),
            "over_bound_at_sample": int(over.sum()),
            "sources": sorted({c.source for c in claims}),
            **region[1],
        }
        if region[0]:
            problems.append(region[0])
        if problems:
            return self.failed("; ".join(problems), **evidence)
        return self.passed(
            f"{len(claims)} calibrated claims hold (output gap {evidence['output_gap_max']:.2g}; "
            f"region bound proved for every claim, {evidence['region_lps']} by LP)",
            **evidence,
        )

    def _regions(
        self,
        ctx: VerifyContext,
        claims: list[CalibratedClaimRecord],
        rows: NDArray[np.int64],
        label: NDArray[np.int64],
        rival: NDArray[np.int64],
        bound: F64,
    ) -> tuple[str | None, dict[str, Any]]:
        box = input_box(ctx.predicate.method)
        if box is None:
            raise CheckUnavailable("the certificate declares no input box to bound regions in")
        affine = ctx.affine_head()
        ev = ctx.evaluate(ctx.openings().x, key="forget")
        params = ctx.patch()
        cut = ev.x[rows].astype(np.float64)
        columns = params.columns()
        worst, lps, bad = -np.inf, 0, []
        for i, claim in enumerate(claims):
            z_rows, z_off, f_rows, f_off = affine.local_affine(cut[i])
            u = claim.patch
            if u >= params.d.shape[0]:
                return f"leaf {claim.leaf_index} names patch {u} outside the model", {}
            lin, off = f_rows.copy(), f_off + params.d[u]
            if columns is not None:
                lin = lin + columns[:, u, :].T
            c = lin[label[i]] - lin[rival[i]]
            const = float(off[label[i]] - off[rival[i]])
            value = interval_upper_bound(c, const, box)
            if value > bound[i]:
                sign = np.where(ev.z[rows[i]] >= 0, -1.0, 1.0)  # the runtime's pattern
                value = _lp_upper(c, const, z_rows * sign[:, None], -z_off * sign, box)
                lps += 1
            worst = max(worst, value - bound[i])
            if value > bound[i]:
                bad.append(claim.leaf_index)
        evidence = {"region_lps": lps, "region_worst_excess": float(worst)}
        if bad:
            return (
                f"{len(bad)} calibrated region claims do not hold: the true-class margin can "
                f"exceed the claimed bound in the region (first: leaf {bad[0]})",
                evidence,
            )
        return None, evidence
