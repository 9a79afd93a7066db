"""``region.certificate``: every certified claim proved over its whole region, with the owner's
dual multipliers and the verifier's own float64 arithmetic plus rigorous rounding terms.

Setting (docs/VERIFY.md, "Region certificates"). The head after the cut is parsed by the
verifier (:func:`audit.verify._affine.parse_head`) into ``z_1 = W_1 x + b_1``,
``z_{l+1} = W_{l+1} relu(z_l) + b_{l+1}``, logits ``f = W_L relu(z_{L-1}) + b_L``. A claim of
patch ``u`` with stored pattern ``m`` (1 = active) defines the pattern-linear functions
``z^u``, ``f^u`` (the ReLUs replaced by the masks ``m``), affine in ``x`` everywhere. Each
obligation row ``(c, beta)`` of the claim (:class:`prune.formats.Obligations`) must satisfy

    c . out(x) <= beta   for every float32 x in the declared box whose activation pattern is m
                         (x in S_u) and at which the served gates are g_u = 1, g_v = 0 (v != u)

where ``out`` is onnxruntime's float32 output of the canonical patched model. Proof checked here:

1. Float32 (assumption A1: each MatMul/Gemm output is a float32 sum of float32 products in any
   order, with or without FMA; elementwise ops correctly rounded — onnxruntime's CPU kernels).
   With ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``, at such an ``x``:
   ``|z~_l - z^u_l(x)| <= e_l`` and ``|f~ - f^u(x)| <= e_L`` where ``e_1 = gamma Zt_1``,
   ``e_{l+1} = |W_{l+1}| (m_l e_l) + gamma Zt_{l+1}``, ``Zt_1 = |W_1| X + |b_1|``,
   ``Zt_{l+1} = |W_{l+1}| (m_l Zt_l (1 + gamma)) + |b_{l+1}|``, ``X = max(|low|, |high|)``
   (the absolute-value pass; with the activation gate, g_u = 1 means the served pattern *is*
   m, so the masks are exact; with another gate ReLU's 1-Lipschitz bound is used). With
   g_u = 1 and g_v = 0 the canonical tail adds exactly ``p_u`` (constant patch: ``d_u``, one
   more rounding of the final Add; affine patch: ``fl(x C_u + d_u)``, gamma-bounded), and every
   other patch adds exactly 0 provided ``|p~_v| <= K_v`` on the box (checked here).
2. Weak duality over the region ``S_u = {x in box : -s_k z^u_k(x) <= 0}`` (exact pattern m):
   for multipliers ``lam >= 0`` (the owner's file; negative entries count as 0),
   ``c.f^u(x) <= max_box L(x)`` with ``L = c.f^u - sum_k lam_k (-s_k) z^u_k``, evaluated by one
   backward pass per row, vectorised over all rows of all claims.
3. The check: ``max_box L + c.p_u + |c|.E_out + gamma64 * Abs <= beta``, where ``Abs`` is the
   same computation on absolute values (a bound on this module's own float64 rounding).

A claim that fails names its leaf and the shortfall. What is *not* covered: points of the
region inside another patch's band (served g_v > 0), points where float32 rounding turns the
served gate below 1 (within the float32 error of a face), inputs outside the declared box
(docs/VERIFY.md).
With the routed gate, no other patch is active on the region, so the first exception is empty."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.proof import read_bounded
from audit.verify._affine import AffineHead
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._patch import PatchParams
from audit.verify._probes import input_box
from prune.formats import ClaimKind, FormatError, read_duals

__all__ = ["RegionCertificate", "RowBounds", "certify_rows", "float32_errors", "gamma"]

F64 = NDArray[np.float64]
U32 = 2.0**-24
U64 = 2.0**-53


def gamma(n: int, unit: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)`` (Higham): the relative error bound of an n-term sum of
    products evaluated in floating point with unit roundoff ``u``, in any order."""
    if n * unit >= 1:
        raise CheckUnavailable(f"gamma_{n} is undefined at unit roundoff {unit:g}")
    return n * unit / (1.0 - n * unit)


@dataclass(frozen=True, eq=False)
class RowBounds:
    """Per obligation row: the certified upper bound of ``c . out(x)`` and its parts."""

    value: F64
    dual: F64
    float32: F64
    rounding: F64


def float32_errors(
    head: AffineHead, masks: F64, box_abs: float, *, served_pattern: bool
) -> tuple[F64, F64]:
    """For patterns ``masks [P, H]``: the logit error bound ``e_L [P, O]`` and the logit
    magnitude bound ``F [P, O]`` at points of the region (module docstring, step 1).

    ``served_pattern``: the served hidden values are known to have the pattern (activation
    gate with g_u = 1), so ``relu(z~) = m z~`` and only active neurons carry error; otherwise
    ``|relu(z~) - relu(z)| <= |z~ - z|`` (ReLU is 1-Lipschitz) for every neuron."""
    weights, biases = head.weights, head.biases
    w_abs = [np.abs(w) for w in weights]
    sizes = [w.shape[0] for w in weights[:-1]]
    split = np.split(masks, np.cumsum(sizes)[:-1], axis=1) if sizes else []
    # LeakyRelu/PRelu (docs/FORMATS.md "Imported models"): the served activation is a z~ with
    # factor a = 1 (active) or the slope (inactive); |a| scales values and errors, and the
    # activation is max(1, |slope|)-Lipschitz
    f_split = np.split(np.abs(head.factors(masks)), np.cumsum(sizes)[:-1], axis=1) if sizes else []
    lip = np.broadcast_to(head.lipschitz(), masks.shape)
    l_split = np.split(lip, np.cumsum(sizes)[:-1], axis=1) if sizes else []
    first = w_abs[0].sum(axis=1) * box_abs + np.abs(biases[0])
    zt = np.broadcast_to(first, (len(masks), len(first))).copy()
    g = gamma(weights[0].shape[1] + 2)
    err = g * zt
    for layer in range(1, len(weights)):
        m, a, lc = split[layer - 1], f_split[layer - 1], l_split[layer - 1]
        mag = zt * (1.0 + g)
        if served_pattern:
            a_bound, e_in = a * mag, a * err
        else:
            a_bound = a * mag + (1.0 - m) * lc * np.minimum(err, mag)
            e_in = lc * err
        g = gamma(weights[layer].shape[1] + 2)
        zt = a_bound @ w_abs[layer].T + np.abs(biases[layer])
        err = e_in @ w_abs[layer].T + g * zt
    return err, zt * (1.0 + g)


def certify_rows(
    *,
    head: AffineHead,
    coeffs: F64,
    bound_const: F64,
    masks: F64,
    lam: F64,
    box: tuple[float, float],
    patch_x: F64 | None,
    output_errors: F64,
    groups: NDArray[np.int64] | None = None,
) -> RowBounds:
    """Upper bounds of ``c . out(x)`` for ``N`` rows: ``coeffs [N, O]`` (c), ``bound_const [N]``
    (``c . d_u``), ``masks [N, H]`` (pattern of the row's patch), ``lam [N, H]``, ``patch_x``
    ``[N, d]`` (``C_u c`` for affine patches, else None) and ``output_errors [N]``
    (``|c| . E_out``, the float32 term).

    ``groups [N]`` (e.g. the patch of each row): the absolute-value pass that bounds this
    function's own rounding runs once per group on the group's elementwise maxima of the masks,
    ``|c|``, ``lam``, ``|c . d_u|`` and ``|C_u c|`` (it is monotone in each, so the group bound
    covers every row of the group)."""
    weights, biases = head.weights, head.biases
    sizes = [w.shape[0] for w in weights[:-1]]
    cuts = np.cumsum(sizes)[:-1]
    lam = np.maximum(lam, 0.0)
    m_parts = np.split(head.factors(masks), cuts, axis=1)  # activation factors (slopes)
    l_parts = np.split(lam, cuts, axis=1)
    sign = 1.0 - 2.0 * masks  # -s_k: +1 inactive (z <= 0), -1 active (-z <= 0)
    s_parts = np.split(sign, cuts, axis=1)
    g = coeffs @ weights[-1]  # coefficient of relu(z_{L-1})
    const = coeffs @ biases[-1] + bound_const
    for layer in range(len(sizes) - 1, -1, -1):
        coef = m_parts[layer] * g - l_parts[layer] * s_parts[layer]  # on z_layer
        const += coef @ biases[layer]
        g = coef @ weights[layer]
    if patch_x is not None:
        g = g + patch_x
    low, high = box
    scale = max(abs(low), abs(high))
    dual = np.maximum(g * low, g * high).sum(axis=1) + const
    float32 = output_errors
    absolute = (
        _absolute_pass(head, coeffs, bound_const, masks, lam, patch_x, scale, groups) + float32
    )
    steps = (
        head.weights[0].shape[1] + sum(sizes) + head.weights[-1].shape[0] + 4 * len(weights) + 16
    )
    rounding = 2.0 * gamma(steps, U64) * absolute
    return RowBounds(value=dual + float32 + rounding, dual=dual, float32=float32, rounding=rounding)


def _absolute_pass(
    head: AffineHead,
    coeffs: F64,
    bound_const: F64,
    masks: F64,
    lam: F64,
    patch_x: F64 | None,
    scale: float,
    groups: NDArray[np.int64] | None,
) -> F64:
    """``Abs`` per row: the dual bound's computation with every quantity replaced by its
    absolute value (``gamma_N * Abs`` bounds the float64 rounding of that computation)."""
    if groups is None:
        groups = np.arange(len(coeffs))
    count = int(groups.max(initial=-1)) + 1
    group_max = _GroupMax(groups, count)
    c_abs = group_max(np.abs(coeffs))
    l_max = group_max(lam)
    k_max = group_max(np.abs(bound_const)[:, None])[:, 0]
    m = group_max(np.abs(masks))  # |slopes|: any mix of patterns is covered
    weights, biases = head.weights, head.biases
    sizes = [w.shape[0] for w in weights[:-1]]
    cuts = np.cumsum(sizes)[:-1]
    m_parts, l_parts = np.split(m, cuts, axis=1), np.split(l_max, cuts, axis=1)
    g_abs = c_abs @ np.abs(weights[-1])
    const_abs = c_abs @ np.abs(biases[-1]) + k_max
    for layer in range(len(sizes) - 1, -1, -1):
        coef_abs = m_parts[layer] * g_abs + l_parts[layer]
        const_abs += coef_abs @ np.abs(biases[layer])
        g_abs = coef_abs @ np.abs(weights[layer])
    if patch_x is not None:
        g_abs = g_abs + group_max(np.abs(patch_x))
    return np.asarray((g_abs.sum(axis=1) * scale + const_abs)[groups])


class _GroupMax:
    """``out[g] = max(0, max of the rows i with groups[i] == g)`` for ``[N, k]`` arrays (rows of
    a group that appears nowhere are 0): ``np.maximum.at`` by one stable sort and
    ``np.maximum.reduceat`` (the same values, without ``ufunc.at``'s per-element cost)."""

    def __init__(self, groups: NDArray[np.int64], count: int) -> None:
        self.order = np.argsort(groups, kind="stable")
        ordered = groups[self.order]
        first = np.ones(len(ordered), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        self.starts = np.flatnonzero(first)
        self.ids = ordered[self.starts]
        self.count = count

    def __call__(self, values: F64) -> F64:
        out = np.zeros((self.count, values.shape[1]))
        if len(self.starts):
            top = np.maximum.reduceat(values[self.order], self.starts, axis=0)
            out[self.ids] = np.maximum(top, 0.0)
        return out


class RegionCertificate(Check[VerifyContext]):
    name = "region.certificate"
    summary = (
        "every certified claim holds over its whole region: the owner's dual multipliers give a "
        "weak-duality bound, checked in float64 with rigorous float32 and rounding error terms"
    )
    requires = frozenset({"original", "forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        start = time.perf_counter()
        predicate = ctx.predicate
        certified = [c for c in predicate.claims if c.region == "certified"]
        if not certified:
            return self.not_applicable("no claim certifies a region")
        descriptor = predicate.region_certificate
        if descriptor is None:
            return self.failed(
                f"{len(certified)} claims certify a region but the certificate names no "
                "region certificate (dual multipliers)"
            )
        box = input_box(predicate.method)
        if box is None:
            return self.failed("certified claims need a declared input box (method.input_box)")
        head = ctx.affine_head()
        openings = ctx.openings()
        ev = ctx.evaluate(openings.x, key="forget")
        parse_error = head.max_error(
            ev.x.astype(np.float64), ev.z.astype(np.float64), ev.logits.astype(np.float64)
        )
        if not parse_error <= _PARSE_TOLERANCE:
            return self.failed(
                f"the verifier's parse of the head disagrees with onnxruntime on the forget "
                f"samples (relative error {parse_error:.3g}): no certificate can be checked"
            )
        box_problem = _box_problem(ctx, ev.x, box)
        if box_problem:
            return self.failed(box_problem)
        params = ctx.patch()
        classes = head.weights[-1].shape[0]
        hidden = sum(w.shape[0] for w in head.weights[:-1])
        rows = [c.obligations(classes) for c in certified]
        total = sum(len(o.bound) for o in rows)
        if descriptor.rows != total or descriptor.hidden != hidden:
            return self.failed(
                f"region certificate declares {descriptor.rows} x {descriptor.hidden} multipliers; "
                f"the certified claims need {total} x {hidden}"
            )
        data = read_bounded(
            ctx.inputs.proof / descriptor.path, ctx.limits.model_bytes, what=descriptor.path
        )
        try:
            lam = read_duals(data, descriptor)
        except FormatError as exc:
            raise CheckUnavailable(str(exc)) from exc
        patch_of = np.asarray([o.patch for o in rows], dtype=np.int64)
        if (patch_of >= params.patches).any():
            return self.failed("a certified claim names a patch outside the model")
        masks = _patterns(ctx, params, certified, patch_of, hidden)
        tail_problem = _tail_problem(params, box)
        if tail_problem:
            return self.failed(tail_problem)
        result = _check(head, params, rows, masks, lam, box)
        seconds = time.perf_counter() - start
        slack = result["slack"]
        evidence: dict[str, Any] = {
            "claims": len(certified),
            "rows": total,
            "min_slack": float(slack.min()),
            "max_float32_term": float(result["float32"].max()),
            "max_rounding_term": float(result["rounding"].max()),
            "ms_per_claim": 1000.0 * seconds / len(certified),
        }
        bad = ~(slack >= 0)  # NaN (an overflowing or non-finite term) proves nothing
        if bad.any():
            owner = np.repeat(np.arange(len(rows)), [len(o.bound) for o in rows])
            first = int(np.flatnonzero(bad)[0])
            claim = certified[int(owner[first])]
            failed_claims = len(set(owner[bad].tolist()))
            return self.failed(
                f"{failed_claims} of {len(certified)} certified claims are not proved over their "
                f"region (first: leaf {claim.leaf_index}, bound exceeds the obligation by "
                f"{-float(slack[first]):.4g})",
                **evidence,
            )
        return self.passed(
            f"all {len(certified)} certified claims proved over their regions ({total} rows; "
            f"min slack {evidence['min_slack']:.3g}, float32 term <= "
            f"{evidence['max_float32_term']:.2g})",
            **evidence,
        )


_PARSE_TOLERANCE = 1e-4  # relative; float32 onnxruntime against the float64 parse
_BOX_COVERAGE = 0.99  # reference points (cut values) that must lie in the declared box


def _box_problem(
    ctx: VerifyContext, forget_cut: NDArray[Any], box: tuple[float, float]
) -> str | None:
    """The claims hold on the declared box only: it must contain every forget sample and (with
    reference data) nearly all of the auditor's reference points, so that a box drawn tight
    around the samples cannot make the certificates vacuous."""
    low, high = box
    outside = ((forget_cut < low) | (forget_cut > high)).any(axis=1)
    if outside.any():
        return (
            f"{int(outside.sum())} forget samples lie outside the declared input box "
            f"[{low:g}, {high:g}]"
        )
    if ctx.reference is not None:
        ref = ctx.evaluate(ctx.reference[0], key="reference").x
        inside = float(((ref >= low) & (ref <= high)).all(axis=1).mean())
        if inside < _BOX_COVERAGE:
            return (
                f"only {inside:.1%} of the reference points lie in the declared input box "
                f"[{low:g}, {high:g}] (at least {_BOX_COVERAGE:.0%} required)"
            )
    return None


def _patterns(
    ctx: VerifyContext,
    params: PatchParams,
    claims: list[ClaimKind],
    patch_of: NDArray[np.int64],
    hidden: int,
) -> F64:
    """The stored activation pattern of each claim's patch ``[claims, H]`` (activation and
    routed gates: ``pos``, for the routed gate its checked packed patterns; dense gate: the
    pattern of the claimed forget sample, which ``structure.patch`` checks against the gate
    rows)."""
    if params.gate == "activation" or params.routed:  # routed: checked, unpacked patterns
        assert params.pos is not None
        if params.pos.shape[0] != hidden:
            raise CheckUnavailable("patch pos does not match the hidden width of the head")
        return np.asarray(params.pos[:, patch_of].T, dtype=np.float64)
    openings = ctx.openings()
    ev = ctx.evaluate(openings.x, key="forget")
    leaf = np.asarray([c.leaf_index for c in claims], dtype=np.int64)
    rows = np.searchsorted(openings.leaf_index, leaf).clip(0, len(openings) - 1)
    if not np.array_equal(openings.leaf_index[rows], leaf):
        raise CheckUnavailable("forget.npz does not open every certified leaf")
    return np.asarray(ev.z[rows] >= 0, dtype=np.float64)


def _tail_problem(params: PatchParams, box: tuple[float, float]) -> str | None:
    """Where g_v = 0 the canonical tail adds exactly 0 iff ``|p~_v| <= K_v`` (float32)."""
    if params.C is None:
        d32 = np.abs(params.d.astype(np.float32))
        over = (d32 > params.K.astype(np.float32)[:, None]).any(axis=1)
    else:
        # exact max over the box of |x C + d| (centre/radius form), plus the float32 evaluation
        # of the sum (gamma_{d+2} times its absolute-value pass), plus float64 slack
        low, high = box
        mid, rad, scale = (low + high) / 2.0, (high - low) / 2.0, max(abs(low), abs(high))
        cols = params.columns()
        assert cols is not None
        size = np.abs(cols).sum(axis=0)
        exact = np.abs(params.d + mid * cols.sum(axis=0)) + rad * size
        rounding = gamma(cols.shape[0] + 2) * (np.abs(params.d) + scale * size)
        reach = (exact + rounding) * (1.0 + 1e-12)
        over = (reach > params.K[:, None]).any(axis=1)
    if over.any():
        return (
            f"{int(over.sum())} patches can exceed their bound K on the box (first: patch "
            f"{int(np.flatnonzero(over)[0])}): off its gate a patch would not add exactly 0"
        )
    return None


def _check(
    head: AffineHead,
    params: PatchParams,
    rows: list[Any],
    masks: F64,
    lam: F64,
    box: tuple[float, float],
) -> dict[str, F64]:
    counts = [len(o.bound) for o in rows]
    owner = np.repeat(np.arange(len(rows)), counts)
    coeffs = np.concatenate([o.coeffs for o in rows])
    beta = np.concatenate([o.bound for o in rows])
    patch = np.asarray([o.patch for o in rows], dtype=np.int64)[owner]
    scale = max(abs(box[0]), abs(box[1]))
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)
    e_out, f_mag = float32_errors(head, unique, scale, served_pattern=params.gate == "activation")
    which = inverse.reshape(-1)[owner]
    d_row = params.d[patch]
    out_err = e_out[which] + U32 * (f_mag[which] + np.abs(d_row))
    patch_x: F64 | None = None
    c3 = params.columns()
    if c3 is not None:
        patch_x = np.einsum("dno,no->nd", c3[:, patch, :], coeffs)
        reach = np.abs(params.d[patch]) + scale * np.abs(c3[:, patch, :]).sum(axis=0)
        out_err = out_err + gamma(c3.shape[0] + 2) * reach * (1.0 + U32)
    bounds = certify_rows(
        head=head,
        coeffs=coeffs,
        bound_const=(coeffs * d_row).sum(axis=1),
        masks=masks[owner],
        lam=lam,
        box=box,
        patch_x=patch_x,
        output_errors=(np.abs(coeffs) * out_err).sum(axis=1),
        groups=patch,
    )
    exactness = np.abs(beta) * 2.0 * U64  # beta is the nearest float64 to a decimal
    return {
        "slack": beta - bounds.value - exactness,
        "float32": bounds.float32,
        "rounding": bounds.rounding,
    }
