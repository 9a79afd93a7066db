"""Black-box replay: every forget sample goes through the deployed ``model.onnx`` with
onnxruntime, exactly as a user of the model would query it, and every claim must hold there.

A claim for leaf ``i`` holds when the opened label is the claim's label, the patched model's top
class is the claimed ``target`` (never the label), and the logit margin
``logit[target] - max_{j != target} logit[j]`` is positive and at least the certified margin
minus ``Policy.margin_tolerance`` (float32 execution of a float64 certificate)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from prune.formats import CalibratedClaimRecord, ClaimKind, ClaimRecord, parse_decimal_string

__all__ = [
    "BATCH_SIZES",
    "ReplayBatch",
    "ReplayClaims",
    "claim_arrays",
    "flip_only",
    "margins",
    "patch_arrays",
]

BATCH_SIZES = (1, 7, 64)
"""Batch sizes of ``replay.batch`` (plus one batch holding every row)."""


def margins(logits: NDArray[np.float32], target: NDArray[np.int64]) -> NDArray[np.float64]:
    """``logit[target] - max_{j != target} logit[j]`` per row, in float64; ``-inf`` for a row
    with any NaN or infinity (so that every "margin >= need" test fails on it)."""
    values = logits.astype(np.float64)
    rows = np.arange(len(values))
    own = values[rows, target]
    others = values.copy()
    others[rows, target] = -np.inf
    with np.errstate(invalid="ignore"):
        margin = own - others.max(axis=1)
    finite = np.isfinite(values).all(axis=1)
    return np.asarray(np.where(finite, margin, -np.inf))


def predictions(logits: NDArray[np.float32]) -> NDArray[np.int64]:
    """``argmax`` per row, ``-1`` for a row with NaN or infinity (never a class)."""
    finite = np.isfinite(logits).all(axis=1)
    return np.asarray(np.where(finite, np.nan_to_num(logits).argmax(axis=1), -1), dtype=np.int64)


def flip_claims(claims: tuple[ClaimKind, ...]) -> tuple[ClaimRecord, ...]:
    """The claims as ``flip`` claims; another kind cannot be checked as one (fail-closed)."""
    for claim in claims:
        if not isinstance(claim, ClaimRecord):
            raise CheckUnavailable(
                f"claim for leaf {claim.leaf_index}: kind {claim.kind!r} is not checked here"
            )
    return claims  # type: ignore[return-value]  # every element checked above


def flip_only(claims: tuple[ClaimKind, ...]) -> tuple[ClaimKind, ...]:
    """The ``flip`` claims, leaving out ``calibrated`` ones (``replay.calibrated`` checks those);
    any other kind stays, so that :func:`claim_arrays` refuses it (fail-closed)."""
    return tuple(c for c in claims if not isinstance(c, CalibratedClaimRecord))


def patch_arrays(claims: tuple[ClaimKind, ...]) -> dict[str, NDArray[Any]]:
    """``leaf`` and ``patch`` columns of flip and calibrated claims (any other kind: refused)."""
    rows = []
    for claim in claims:
        if not isinstance(claim, ClaimRecord | CalibratedClaimRecord):
            raise CheckUnavailable(
                f"claim for leaf {claim.leaf_index}: kind {claim.kind!r} is not checked here"
            )
        rows.append((claim.leaf_index, claim.patch))
    table = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return {"leaf": table[:, 0], "patch": table[:, 1]}


def claim_arrays(all_claims: tuple[ClaimKind, ...]) -> dict[str, NDArray[Any]]:
    """Claims as columns: leaf, label, target, patch (int64), margin (float64), certified."""
    claims = flip_claims(all_claims)
    return {
        "leaf": np.array([c.leaf_index for c in claims], dtype=np.int64),
        "label": np.array([c.label for c in claims], dtype=np.int64),
        "target": np.array([c.target for c in claims], dtype=np.int64),
        "patch": np.array([c.patch for c in claims], dtype=np.int64),
        "margin": np.array(
            [parse_decimal_string(c.certified_margin, field="certified_margin") for c in claims]
        ),
        "certified": np.array([c.region == "certified" for c in claims]),
    }


class ReplayClaims(Check[VerifyContext]):
    name = "replay.claims"
    summary = (
        "every forget sample, replayed through model.onnx with onnxruntime, gets the claimed "
        "target with at least the certified margin"
    )
    requires = frozenset({"forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate = ctx.predicate
        flip = flip_only(predicate.claims)
        if not flip:
            return self.not_applicable("no flip claims (calibrated claims: replay.calibrated)")
        openings = ctx.openings()
        cols = claim_arrays(flip)
        rows = np.searchsorted(openings.leaf_index, cols["leaf"])
        rows = np.minimum(rows, len(openings) - 1)
        if not np.array_equal(openings.leaf_index[rows], cols["leaf"]):
            raise CheckUnavailable("forget.npz does not open every claimed leaf")
        x = openings.x[rows]
        logits = ctx.patched_logits(x)
        classes = logits.shape[1]
        if (cols["target"] >= classes).any() or (cols["label"] >= classes).any():
            return self.failed(f"a claim names a class outside the model's {classes} classes")
        problems: list[str] = []
        wrong_label = openings.y[rows] != cols["label"]
        if wrong_label.any():
            leaf = int(cols["leaf"][wrong_label][0])
            problems.append(
                f"{int(wrong_label.sum())} claims name a label other than the opened one "
                f"(first: leaf {leaf})"
            )
        if predicate.mode == "class" and (cols["label"] != predicate.forget_class).any():
            problems.append(f"class mode: a claim's label is not class {predicate.forget_class}")
        predicted = predictions(logits)
        margin = margins(logits, cols["target"])
        need = cols["margin"] - ctx.policy.margin_tolerance
        wrong_class = predicted != cols["target"]
        short = ~wrong_class & ((margin < need) | (margin <= 0))
        if wrong_class.any():
            i = int(np.flatnonzero(wrong_class)[0])
            problems.append(
                f"{int(wrong_class.sum())} of {len(x)} forget samples are not predicted as claimed "
                f"(first: leaf {int(cols['leaf'][i])} predicted {int(predicted[i])}, claimed "
                f"{int(cols['target'][i])})"
            )
        if short.any():
            i = int(np.flatnonzero(short)[0])
            problems.append(
                f"{int(short.sum())} claims fall short of their certified margin (first: leaf "
                f"{int(cols['leaf'][i])} margin {margin[i]:.6g} < {cols['margin'][i]:.6g})"
            )
        evidence = {
            "claims": len(x),
            "wrong_class": int(wrong_class.sum()),
            "short_margin": int(short.sum()),
            "wrong_label": int(wrong_label.sum()),
            "min_margin_slack": float((margin - cols["margin"]).min()),
            "still_predicting_label": int((predicted == cols["label"]).sum()),
        }
        if problems:
            return self.failed("; ".join(problems), **evidence)
        return self.passed(
            f"{len(x)} claims hold (worst margin slack {evidence['min_margin_slack']:.3g})",
            **evidence,
        )


class ReplayBatch(Check[VerifyContext]):
    name = "replay.batch"
    summary = (
        "model.onnx gives every forget sample the same output one row at a time and in batches "
        "of 7, 64 and all rows (no batch-dependent behaviour)"
    )
    requires = frozenset({"forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        """Rows are the opened forget samples, tiled so that every batch size is filled; the
        reference is one row per query (how a single user queries). Tolerance:
        ``BATCH_TOLERANCE * (1 + |logit|)`` per entry, documented in docs/VERIFY.md (the
        float32 kernels may block a sum differently for another batch size); the predicted
        class must agree exactly."""
        x = ctx.openings().x
        if len(x) == 0:
            raise CheckUnavailable("no forget samples to replay")
        biggest = max(len(x), max(BATCH_SIZES))
        rows = np.resize(np.arange(len(x)), biggest + max(BATCH_SIZES))
        queries = np.ascontiguousarray(x[rows])
        single = ctx.patched_logits(queries[:biggest], batch_size=1)
        worst, sizes = 0.0, [*BATCH_SIZES[1:], len(queries)]
        for size in sizes:
            got = ctx.patched_logits(queries, batch_size=size)[:biggest]
            diff = np.abs(got.astype(np.float64) - single) / (1.0 + np.abs(single))
            worst = max(worst, float(diff.max()))
            changed = predictions(got) != predictions(single)
            if changed.any() or worst > BATCH_TOLERANCE:
                i = int(np.flatnonzero(changed | (diff > BATCH_TOLERANCE).any(axis=1))[0])
                return self.failed(
                    f"batch of {size} rows: forget sample at leaf "
                    f"{int(ctx.openings().leaf_index[rows[i]])} gets another output than alone "
                    f"(class {int(predictions(got)[i])} vs {int(predictions(single)[i])}, "
                    f"relative difference {float(diff[i].max()):.3g})",
                    batch_size=size,
                    max_relative_difference=worst,
                )
        return self.passed(
            f"{biggest} rows agree one at a time and in batches of {', '.join(map(str, sizes))} "
            f"(max relative difference {worst:.2g})",
            batch_sizes=[1, *sizes],
            max_relative_difference=worst,
        )


BATCH_TOLERANCE = 1e-5
"""Largest relative difference ``|a - b| / (1 + |b|)`` between a row's logits alone and inside
a batch (float32 kernels may order a dot product differently for another batch size; a batch
trick moves logits by the patch size, orders of magnitude more)."""
