"""The class claim (docs/FORMATS.md, "Class claim"): what a class-suppression patch removes.

Kind ``class-suppression``: the patched model replaces the logit of class ``K`` by
``min(z_K, max_{j != K} z_j - m)`` and leaves every other logit unchanged, so that class ``K`` is
never the top class on the declared input box of the cut tensor, and its logit stays at least
``m`` (exact arithmetic) below the best other class. ``logit_bound`` is the owner's bound on
``|z_j|`` over the box (interval propagation from the original weights); the verifier recomputes
its own and never relies on this value.

Float32 argument (why the claim holds for onnxruntime's evaluation, not only on paper): ``Min``,
``ReduceMax`` and the masking ``Add`` are exact; the only rounding is ``t = fl(M - m)`` with
``M = max_{j != K} z_j``. If ``|M| <= B`` and ``m`` is at least the float32 spacing at ``2B``, the
exact ``M - m`` lies at or below the float just under ``M``, so ``t < M`` and the patched
``z_K <= t < M``: ``K`` is strictly below another class and ArgMax never returns it.
:func:`float32_margin_holds` is that condition."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from prune.formats._canonical import parse_decimal_string
from prune.formats._fields import expect_int, expect_keys, expect_object, expect_str
from prune.formats.errors import MalformedError

__all__ = [
    "CLASS_CLAIM_KINDS",
    "CLASS_SUPPRESS_FORMAT",
    "ClassClaim",
    "float32_margin_holds",
    "removed_text",
]

CLASS_SUPPRESS_FORMAT = "prune/class-suppress/v1"
CLASS_CLAIM_KINDS = ("class-suppression",)


def removed_text(forget_class: int, low: float, high: float) -> str:
    """The sentence a class claim certifies, word for word (reports quote it)."""
    return (
        f"class {forget_class} is never predicted on the declared input box "
        f"[{low!r}, {high!r}] of the cut tensor"
    )


def float32_margin_holds(margin: float, bound: float) -> bool:
    """Whether float32 ``fl(M - margin) < M`` for every finite float32 ``M`` with ``|M| <= bound``:
    ``margin`` (as float32) is at least the float32 spacing at ``2 * bound`` and ``2 * bound`` is
    finite in float32."""
    m32 = float(np.float32(margin))
    if not (math.isfinite(bound) and bound >= 0 and m32 > 0):
        return False
    top = np.float32(2.0 * bound + 1.0)
    if not np.isfinite(top):
        return False
    return m32 >= float(np.spacing(top))


@dataclass(frozen=True)
class ClassClaim:
    """Kind ``class-suppression`` over the box ``[low, high]`` (every coordinate of the cut
    tensor; ``source`` as in ``method.input_box``). Decimal strings throughout; ``removed`` is
    :func:`removed_text` and is checked to be exactly that."""

    forget_class: int
    margin: str
    low: str
    high: str
    source: str
    logit_bound: str
    kind: str = "class-suppression"

    @property
    def removed(self) -> str:
        return removed_text(
            self.forget_class,
            parse_decimal_string(self.low, field="class_claim.box.low"),
            parse_decimal_string(self.high, field="class_claim.box.high"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "class": self.forget_class,
            "margin": self.margin,
            "box": {"low": self.low, "high": self.high, "source": self.source},
            "logit_bound": self.logit_bound,
            "removed": self.removed,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> ClassClaim:
        doc = expect_object(doc, "class_claim")
        expect_keys(
            doc,
            "class_claim",
            required={"kind", "class", "margin", "box", "logit_bound", "removed"},
        )
        kind = expect_str(doc["kind"], "class_claim.kind")
        if kind not in CLASS_CLAIM_KINDS:
            raise MalformedError(f"class_claim.kind: unknown kind {kind[:40]!r}")
        box = expect_object(doc["box"], "class_claim.box")
        expect_keys(box, "class_claim.box", required={"low", "high", "source"})
        low = parse_decimal_string(box["low"], field="class_claim.box.low")
        high = parse_decimal_string(box["high"], field="class_claim.box.high")
        if not low < high:
            raise MalformedError("class_claim.box: low must be below high")
        margin = parse_decimal_string(doc["margin"], field="class_claim.margin")
        if not margin > 0:
            raise MalformedError("class_claim.margin: must be positive")
        bound = parse_decimal_string(doc["logit_bound"], field="class_claim.logit_bound")
        if not bound >= 0:
            raise MalformedError("class_claim.logit_bound: must be non-negative")
        claim = cls(
            forget_class=expect_int(doc["class"], "class_claim.class", minimum=0),
            margin=doc["margin"],
            low=box["low"],
            high=box["high"],
            source=expect_str(box["source"], "class_claim.box.source"),
            logit_bound=doc["logit_bound"],
            kind=kind,
        )
        if doc["removed"] != claim.removed:
            raise MalformedError("class_claim.removed: not the canonical sentence for this claim")
        return claim
