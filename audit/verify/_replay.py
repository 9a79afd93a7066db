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
from prune.formats import AnyClaimRecord, ClaimRecord, parse_decimal_string

__all__ = ["ReplayClaims", "claim_arrays", "margins"]


def margins(logits: NDArray[np.float32], target: NDArray[np.int64]) -> NDArray[np.float64]:
    """``logit[target] - max_{j != target} logit[j]`` per row, in float64."""
    values = logits.astype(np.float64)
    rows = np.arange(len(values))
    own = values[rows, target]
    others = values.copy()
    others[rows, target] = -np.inf
    return np.asarray(own - others.max(axis=1))


def claim_arrays(claims: tuple[AnyClaimRecord, ...]) -> dict[str, NDArray[Any]]:
    """Claims as columns: leaf, label, target, patch (int64), margin (float64), certified, flip.
    ``flip`` is False for ``calibrated`` claims, whose ``target`` column holds the rival class and
    ``margin`` NaN: checks of flip claims must select ``flip`` rows (replay.calibrated checks
    the others)."""
    flip = [isinstance(c, ClaimRecord) for c in claims]
    return {
        "leaf": np.array([c.leaf_index for c in claims], dtype=np.int64),
        "label": np.array([c.label for c in claims], dtype=np.int64),
        "target": np.array(
            [c.target if isinstance(c, ClaimRecord) else c.rival for c in claims], dtype=np.int64
        ),
        "patch": np.array([c.patch for c in claims], dtype=np.int64),
        "margin": np.array(
            [
                parse_decimal_string(c.certified_margin, field="certified_margin")
                if isinstance(c, ClaimRecord)
                else np.nan
                for c in claims
            ]
        ),
        "certified": np.array([c.region == "certified" for c in claims]),
        "flip": np.array(flip, dtype=bool),
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
        flip = tuple(c for c in predicate.claims if isinstance(c, ClaimRecord))
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
        predicted = logits.argmax(axis=1)
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
